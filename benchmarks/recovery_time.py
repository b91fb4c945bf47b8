"""Recovery time: SIGKILL a worker with sagas in flight, restart it, time until all are terminal.

The first process starts ``--in-flight`` sagas whose second step never returns, reports that
they are all running, and is killed with SIGKILL. A new process on the same store (same worker
id) recovers them; we print the seconds from that process's start to the last saga terminal.

    python benchmarks/recovery_time.py --store sqlite:///recovery.db --in-flight 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()

from sagaway import Engine, Saga, SagaStatus, StepContext  # noqa: E402

OWNER = "recovery-bench"


def build_saga(hang: bool) -> Saga:
    saga = Saga("recovery_bench", version=1)

    @saga.step
    async def reserve(ctx: StepContext, order: int) -> int:
        return order

    @saga.step
    async def pay(ctx: StepContext, order: int) -> int:
        if hang:  # in the first process: in flight until killed
            await asyncio.Event().wait()
        return order

    @saga.step
    async def ship(ctx: StepContext, order: int) -> int:
        return order

    return saga


async def first_life(url: str, in_flight: int) -> None:
    saga = build_saga(hang=True)
    async with Engine(url, sagas=[saga], owner_id=OWNER) as engine:
        for i in range(in_flight):
            await engine.start(saga, i)
        while True:  # until every saga is inside its hanging step
            page = await engine.list_sagas(limit=in_flight)
            records = [await engine.get(r.id) for r in page.items]
            if len(records) == in_flight and all(r.step("pay") is not None for r in records):
                break
            await asyncio.sleep(0.01)
        print("in-flight", flush=True)
        await asyncio.Event().wait()


async def second_life(url: str, in_flight: int) -> float:
    saga = build_saga(hang=False)
    async with Engine(url, sagas=[saga], owner_id=OWNER) as engine:
        ids = [r.id for r in (await engine.list_sagas(limit=in_flight)).items]
        records = await asyncio.gather(*(engine.wait(i, timeout=60) for i in ids))
        elapsed = time.perf_counter() - PROCESS_START
        assert all(r.status is SagaStatus.SUCCEEDED for r in records), records
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--role", choices=["parent", "first", "second"], default="parent")
    args = parser.parse_args()
    url = args.store or f"sqlite:///{tempfile.mkdtemp()}/recovery.db"
    if args.role == "first":
        asyncio.run(first_life(url, args.in_flight))
        return
    if args.role == "second":
        print(json.dumps({"recovery_s": asyncio.run(second_life(url, args.in_flight))}))
        return

    cmd = [sys.executable, os.path.abspath(__file__), "--store", url, "--in-flight"]
    first = subprocess.Popen(
        [*cmd, str(args.in_flight), "--role", "first"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "in-flight"
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run(
        [*cmd, str(args.in_flight), "--role", "second"],
        capture_output=True,
        text=True,
        check=True,
    )
    recovery_s = json.loads(second.stdout.strip().splitlines()[-1])["recovery_s"]
    result = {
        "store": url.split("://", 1)[0],
        "in_flight": args.in_flight,
        "recovery_s": round(recovery_s, 3),
    }
    print(f"store       {result['store']}")
    print(f"in_flight   {result['in_flight']}")
    print(f"recovery_s  {result['recovery_s']}  (new process start -> all sagas terminal)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
