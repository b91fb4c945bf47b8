"""The engine benchmark's sagas, counted in instructions: deterministic enough for callgrind.

Runs ``engine_throughput.py``'s workload (three-step sagas, every 10th compensating, C in
flight) once to warm up, then ``--n`` sagas inside ``functools.reduce``, a C function that
callgrind can toggle collection on, with recovery passes too rare to run:

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out python benchmarks/engine_instructions.py \\
        --store memory:// --n 1000
    callgrind_annotate /tmp/cg.out | head -20   # "PROGRAM TOTALS" / n = instructions per saga

``--store sqlite://`` runs on a throwaway file (the writer's statements run on the loop's
thread, inside the counted call; the fsync's kernel time is not an instruction). ``--floor``
counts the store's floor instead (``sqlite_floor.measure``: ``none``, dicts, for memory://;
``group`` for sqlite://), set-up included: run it at two values of ``--n`` and divide the
difference by the difference of ``--n``. Prints one JSON line (CPU per saga: meaningless
under valgrind, only a sanity check outside it).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import tempfile
import time
from typing import Any

from engine_throughput import build_saga, drive, make_ledger
from sagaway import Engine
from sagaway.store import open_store


def run(url: str, n: int, warm: int, concurrency: int) -> dict[str, Any]:
    """Set up and warm up, then the ``n`` measured sagas as one ``run_until_complete`` inside
    ``functools.reduce`` (set-up and shutdown are outside the counted call)."""
    loop = asyncio.new_event_loop()
    store = open_store(url)
    engine = Engine(store, owner_id="bench", recovery_interval=3600.0, lease_seconds=7200.0)
    loop.run_until_complete(engine.__aenter__())
    try:
        ledger = make_ledger(store)
        loop.run_until_complete(ledger.setup())
        saga = build_saga(ledger)
        loop.run_until_complete(drive(engine, saga, range(warm), concurrency))
        measured = range(warm, warm + n)
        cpu = time.process_time()
        functools.reduce(
            lambda _, __: loop.run_until_complete(drive(engine, saga, measured, concurrency)),
            [0, 0],
        )
        cpu = time.process_time() - cpu
    finally:
        loop.run_until_complete(engine.__aexit__(None, None, None))
        loop.close()
    return {"cpu_us_per_saga": round(cpu / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--floor", action="store_true", help="count the store's floor instead")
    args = parser.parse_args()
    gc.set_threshold(50_000, 20, 100)
    if args.floor:
        import sqlite_floor

        kind = {"memory": "none", "sqlite": "group"}[args.store.split("://")[0]]
        floor = functools.reduce(
            lambda _, __: sqlite_floor.measure(kind, args.n, args.concurrency), [0, 0]
        )
        print(json.dumps({"floor": kind, "n": args.n, "cpu_us_per_saga": floor["cpu_us_per_saga"]}))
        return
    url = args.store
    if url == "sqlite://":
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    result = run(url, args.n, args.warm, args.concurrency)
    print(json.dumps({"store": url.split("://")[0], "n": args.n, **result}))


if __name__ == "__main__":
    main()
