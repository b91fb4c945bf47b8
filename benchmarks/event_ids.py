"""What a choreography event's id costs its receiver's inbox: random (uuid4) against
time-ordered ids (``sagaway.state.new_saga_id``: the millisecond, then 80 random bits).

A receiving service keys its inbox row ``"{event id}@{service}"`` (a B-tree that only grows).
With random ids each delivery lands on a leaf of its own, so a group commit writes a page per
event once the inbox outgrows the page cache's working set; with time-ordered ids a batch's
rows share the rightmost leaf. This delivers ``--n`` events (``--concurrency`` at a time) to
one ``EventService`` on a fresh SQLite file, once per id kind and round, the kinds alternating,
and reports per event: the WAL bytes written (automatic checkpoints off, so the WAL holds every
frame) and the process's CPU (user and kernel)::

    python benchmarks/event_ids.py --n 20000 --rounds 3

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from statistics import median
from typing import Any

from sqlalchemy import event as sa_event

from report import kernel_cpu_s
from sagaway.choreography import DomainEvent, EventService
from sagaway.state import new_saga_id

KINDS: dict[str, Callable[[], str]] = {
    "uuid4": lambda: uuid.uuid4().hex,
    "time-ordered": lambda: new_saga_id(time.time()),
}


def file_size(path: str) -> int:
    return os.path.getsize(path)


async def deliver_all(kind: str, n: int, concurrency: int, directory: str) -> dict[str, Any]:
    path = os.path.join(directory, f"{kind}.db")
    service = EventService("receiver", f"sqlite:///{path}")

    @sa_event.listens_for(service.engine, "connect")
    def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA wal_autocheckpoint = 0")

    @service.on("order_paid")
    def paid(ctx: Any) -> None:  # the inbox row is the whole effect
        pass

    service.create_tables()
    make_id = KINDS[kind]
    events = [
        DomainEvent(
            id=make_id(),
            type="order_paid",
            correlation_id=f"order-{i}",
            source="payments",
            payload={"order": i},
            at=time.time(),
        )
        for i in range(n)
    ]
    todo = iter(events)

    async def worker() -> None:
        for e in todo:
            assert await service.deliver(e)

    cpu, kernel, began = time.process_time(), kernel_cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - began
    cpu, kernel = time.process_time() - cpu, kernel_cpu_s() - kernel
    wal_bytes = file_size(path + "-wal")  # before close: the last connection's close removes it
    await service.close()
    return {
        "kind": kind,
        "events_per_s": n / seconds,
        "cpu_us_per_event": cpu / n * 1e6,
        "sys_us_per_event": kernel / n * 1e6,
        "wal_bytes_per_event": wal_bytes / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            with tempfile.TemporaryDirectory(dir=".") as directory:
                runs[kind].append(
                    asyncio.run(deliver_all(kind, args.n, args.concurrency, directory))
                )
    fields = ("events_per_s", "cpu_us_per_event", "sys_us_per_event", "wal_bytes_per_event")
    print(f"{'ids':14}" + "".join(f"{f:>22}" for f in fields))
    summary: dict[str, dict[str, float]] = {}
    for kind, results in runs.items():
        summary[kind] = {f: round(median(r[f] for r in results), 1) for f in fields}
        print(f"{kind:14}" + "".join(f"{summary[kind][f]:>22,.1f}" for f in fields))
    base, new = summary["uuid4"], summary["time-ordered"]
    print(
        json.dumps(
            {
                "benchmark": "event_ids",
                "n": args.n,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "medians": summary,
                "ranges": {
                    kind: {
                        f: [round(min(r[f] for r in rs), 1), round(max(r[f] for r in rs), 1)]
                        for f in fields
                    }
                    for kind, rs in runs.items()
                },
                "cpu_ratio": round(new["cpu_us_per_event"] / base["cpu_us_per_event"], 3),
                "wal_ratio": round(new["wal_bytes_per_event"] / base["wal_bytes_per_event"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
