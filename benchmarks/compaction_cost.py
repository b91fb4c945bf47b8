"""What compacting a finished saga costs on SQLite, without the engine's noise.

Drives ``SQLiteStore`` directly with the engine benchmark's three-step saga as the engine
writes it (create with the first step RUNNING; one commit per step that records its outcome
and starts the next; the last one finishes the saga), ``--concurrency`` sagas in lockstep, so
every run forms the very same group-commit batches. Each round runs the workload with
compaction on and with it off (``_sqlite_ops.FINISHED`` emptied: the finished sagas keep their
rows), each on a fresh file, and prints CPU per saga of each and the difference:

    python benchmarks/compaction_cost.py --n 4000 --rounds 3

Deterministic, so it can be counted in instructions: ``--only on`` (or ``off``) runs one side,
and each run (the store's set-up, then the sagas) is inside ``functools.reduce`` for
callgrind's ``--toggle-collect``::

    valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        python benchmarks/compaction_cost.py --n 2000 --rounds 1 --only on

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import tempfile
import time
from typing import Any

from sagaway.state import Change, Event, EventType, NewSaga, Phase, SagaStatus, StepRecord
from sagaway.state import StepStatus as S
from sagaway.store import _sqlite_ops
from sagaway.store.sqlite import SQLiteStore

OWNER = "bench"
STEPS = ("reserve_inventory", "process_payment", "ship_order")
T0 = 1_795_692_822.7619762
DT = 17333 / 4194304  # a step's duration: the engine benchmark's times are 2**-22 s apart


def _step(name: str, status: S, started: float, finished: float | None, out: Any) -> StepRecord:
    return StepRecord(name, Phase.FORWARD, status, 1, out, None, False, started, finished)


async def saga(store: SQLiteStore, number: int) -> None:
    saga_id = f"{number:012x}"
    at = T0 + number * DT
    await store.create(
        NewSaga(
            id=saga_id,
            name="bench_checkout",
            version=1,
            input={"order_id": number, "amount_cents": 5000},
            at=at,
            status=SagaStatus.RUNNING,
            owner=OWNER,
            lease_expires_at=at + 30,
            steps=[_step(STEPS[0], S.RUNNING, at, None, None)],
            events=[
                Event(at, EventType.SAGA_STARTED),
                Event(at, EventType.STEP_STARTED, STEPS[0], None, 1, OWNER),
            ],
        )
    )
    outputs = (1, 5000, f"shipment-{number}")
    for i, name in enumerate(STEPS):
        started, done = at + i * DT, at + (i + 1) * DT
        steps = [_step(name, S.SUCCEEDED, started, done, outputs[i])]
        events = [Event(done, EventType.STEP_SUCCEEDED, name, None, 1)]
        last = i == len(STEPS) - 1
        if not last:
            steps.append(_step(STEPS[i + 1], S.RUNNING, done, None, None))
            events.append(Event(done, EventType.STEP_STARTED, STEPS[i + 1], None, 1, OWNER))
        else:
            events.append(Event(done, EventType.SAGA_SUCCEEDED))
        change = Change(
            status=SagaStatus.SUCCEEDED if last else None,
            steps=steps,
            events=events,
            release_lease=last,
        )
        await store.commit(saga_id, OWNER, change, done)


async def run(n: int, concurrency: int, compact: bool) -> dict[str, Any]:
    saved = _sqlite_ops.FINISHED
    if not compact:
        _sqlite_ops.FINISHED = frozenset()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(f"sqlite:///{os.path.join(tmp, 'log.db')}")
            async with store:
                numbers = iter(range(n))

                async def client() -> None:
                    for number in numbers:
                        await saga(store, number)

                async def all_clients() -> None:
                    await asyncio.gather(*(client() for _ in range(concurrency)))

                cpu = time.process_time()
                await all_clients()
                cpu = time.process_time() - cpu
                batches = store.stats.batches
    finally:
        _sqlite_ops.FINISHED = saved
    return {"cpu_us_per_saga": round(cpu / n * 1e6, 1), "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["on", "off"])
    args = parser.parse_args()
    sides = [args.only] if args.only else ["off", "on"]
    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for side in sides:
            # functools.reduce: a C function around the run, for callgrind's --toggle-collect
            # (the store's set-up is in it too: the same on both sides of an A/B).
            result = functools.reduce(
                lambda _, __: asyncio.run(run(args.n, args.concurrency, side == "on")), [0, 0]
            )
            rows.append({"round": r + 1, "compaction": side, **result})
    print(f"{'round':>5}  {'compaction':>10}  {'CPU us/saga':>11}  {'batches':>7}")
    for row in rows:
        print(
            f"{row['round']:>5}  {row['compaction']:>10}  {row['cpu_us_per_saga']:>11}  "
            f"{row['batches']:>7}"
        )
    summary: dict[str, Any] = {"n": args.n, "concurrency": args.concurrency}
    for side in sides:
        cpu = sorted(row["cpu_us_per_saga"] for row in rows if row["compaction"] == side)
        summary[f"cpu_us_{side}_median"] = cpu[len(cpu) // 2]
    if len(sides) == 2:
        extra = summary["cpu_us_on_median"] - summary["cpu_us_off_median"]
        summary["cpu_us_compaction"] = round(extra, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
