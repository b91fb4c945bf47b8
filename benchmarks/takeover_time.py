"""Takeover time: a worker with sagas in flight is SIGKILLed; another worker, already running
under a different owner id, takes them over once their leases expire.

Worker B (owner ``takeover-b``) is started first and idles. Worker A (owner ``takeover-a``)
starts ``--in-flight`` sagas whose second step never returns in A, and reports when every one
is inside it. The parent SIGKILLs A and polls the store until all of A's sagas are terminal;
it prints the seconds from the kill to the last one terminal, and checks that B finished them.

Expected: the rest of A's leases (between 2/3 and all of ``--lease-seconds``, since an engine
renews every third of a lease) plus up to one recovery interval of B (min(1 s, lease / 3)),
plus the time to run the remaining steps.

    python benchmarks/takeover_time.py --store postgresql://postgres@127.0.0.1/postgres \\
        --lease-seconds 5 --in-flight 32
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

from report import print_report
from sagaway import Engine, EventType, Saga, SagaStatus, StepContext, open_store

NAME = "takeover_bench"


def build_saga(hang: bool) -> Saga:
    saga = Saga(NAME, version=1)

    @saga.step
    async def reserve(ctx: StepContext, order: int) -> int:
        return order

    @saga.step
    async def pay(ctx: StepContext, order: int) -> int:
        if hang:  # in worker A: in flight until A is killed
            await asyncio.Event().wait()
        return order

    @saga.step
    async def ship(ctx: StepContext, order: int) -> int:
        return order

    return saga


async def worker_a(url: str, in_flight: int, lease: float) -> None:
    saga = build_saga(hang=True)
    async with Engine(url, sagas=[saga], owner_id="takeover-a", lease_seconds=lease) as engine:
        ids = [await engine.start(saga, i) for i in range(in_flight)]
        while True:  # until every saga is inside its hanging step
            records = [await engine.get(i) for i in ids]
            if all(r.step("pay") is not None for r in records):
                break
            await asyncio.sleep(0.01)
        print(json.dumps(ids), flush=True)
        await asyncio.Event().wait()


async def worker_b(url: str, lease: float) -> None:
    saga = build_saga(hang=False)
    async with Engine(url, sagas=[saga], owner_id="takeover-b", lease_seconds=lease):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def wait_terminal(url: str, ids: list[str], killed_at: float, timeout: float) -> float:
    """Poll the store until every saga is terminal; seconds since ``killed_at``."""
    store = open_store(url)
    async with store:
        left = set(ids)
        while left:
            if time.monotonic() - killed_at > timeout:
                raise SystemExit(f"{len(left)} sagas still not terminal after {timeout} s")
            for saga_id in list(left):
                record = await store.get(saga_id, history=False)
                if record.status.is_terminal:
                    left.discard(saga_id)
            if left:
                await asyncio.sleep(0.01)
        elapsed = time.monotonic() - killed_at
        for saga_id in ids:
            record = await store.get(saga_id)
            assert record.status is SagaStatus.SUCCEEDED, record
            claims = [e.detail for e in record.history if e.type is EventType.SAGA_CLAIMED]
            assert claims[-1:] == ["takeover-b"], (saga_id, claims)
        return elapsed


async def fresh_start(url: str) -> None:
    scheme = url.split("://", 1)[0].split("+")[0]
    if scheme in ("postgresql", "postgres"):
        import asyncpg  # type: ignore[import-untyped]

        from sagaway.store.postgres import parse_url

        settings = parse_url(url)
        conn = await asyncpg.connect(settings.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
        finally:
            await conn.close()
    elif scheme in ("redis", "rediss"):
        store = open_store(url)
        async with store:
            await store.purge()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="", help="saga store URL (default: a new SQLite file)")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--lease-seconds", type=float, default=5.0)
    parser.add_argument(
        "--fresh", action="store_true", help="drop the PostgreSQL schema / Redis prefix first"
    )
    parser.add_argument("--role", choices=["parent", "a", "b"], default="parent")
    args = parser.parse_args()
    url = args.store or f"sqlite:///{tempfile.mkdtemp()}/takeover.db"
    if url.startswith("memory:"):
        parser.error("the workers are processes: use a store they can share")
    if args.role == "a":
        asyncio.run(worker_a(url, args.in_flight, args.lease_seconds))
        return
    if args.role == "b":
        asyncio.run(worker_b(url, args.lease_seconds))
        return

    if args.fresh:
        asyncio.run(fresh_start(url))
    base = [sys.executable, os.path.abspath(__file__), f"--store={url}"]
    base += [f"--in-flight={args.in_flight}", f"--lease-seconds={args.lease_seconds}"]
    b = subprocess.Popen([*base, "--role=b"], stdout=subprocess.PIPE, text=True)
    a = None
    try:
        assert b.stdout is not None
        assert b.stdout.readline().strip() == "ready", "worker B did not start"
        a = subprocess.Popen([*base, "--role=a"], stdout=subprocess.PIPE, text=True)
        assert a.stdout is not None
        line = a.stdout.readline()
        assert line, "worker A did not start"
        ids = json.loads(line)
        a.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        a.wait()
        takeover = asyncio.run(wait_terminal(url, ids, killed_at, timeout=10 * args.lease_seconds))
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
    if args.fresh:
        asyncio.run(fresh_start(url))
    result = {
        "store": url.split("://", 1)[0],
        "in_flight": args.in_flight,
        "lease_seconds": args.lease_seconds,
        "recovery_interval_s": round(min(1.0, args.lease_seconds / 3), 3),
        "takeover_s": round(takeover, 3),
    }
    print_report(result)


if __name__ == "__main__":
    main()
