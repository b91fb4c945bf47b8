"""Engine throughput: N three-step checkout-like sagas, C at a time, on one saga store.

Each step writes a row to a table in the same database as the saga log (on SQLite through the
store's group commit, so the effect is durable with the batch); every 10th saga fails at step 3
and compensates. Prints a table, then one JSON line:

    python benchmarks/engine_throughput.py --store sqlite:///bench.db --n 10000 --concurrency 32

``--workers K`` runs K processes against the one store, each with its own engine (owner id
``bench-0``..``bench-K-1``) and its own ledger connections, each running every K-th saga with
``--concurrency`` sagas in flight (``--split`` shares ``--concurrency`` out between them
instead). They are set up first and started together; sagas/s is N over the time from the
first start to the last finish, p50/p99 are over all sagas of all workers:

    python benchmarks/engine_throughput.py --store postgresql://postgres@127.0.0.1/postgres \\
        --fresh --workers 4 --n 10000 --concurrency 32

``--floor`` first runs the same workload without the engine in this invocation (memory: on
dicts, ``sqlite_floor.py --commit none``; SQLite: ``sqlite_floor.py``, group commit, in a
temporary file; PostgreSQL: ``pg_floor.py``, on the URL's schema with ``_floor`` appended), then
the engine, and prints both and the ratios: sagas/s (engine over floor) and CPU per saga (floor
over engine), so 1.0 is as fast as the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from report import kernel_cpu_s, latency_ms, print_report
from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.store import SagaStore, open_store

T = TypeVar("T")


class Order(BaseModel):
    order_id: int
    amount_cents: int


class Ledger(Protocol):
    async def setup(self) -> None: ...
    async def write(self, ctx: StepContext, table: str, order_id: int, amount: int) -> None: ...


class MemoryLedger:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, tuple[int, int]]] = {}

    async def setup(self) -> None:
        self.tables = {t: {} for t in TABLES}

    async def write(self, ctx: StepContext, table: str, order_id: int, amount: int) -> None:
        self.tables[table].setdefault(ctx.idempotency_key, (order_id, amount))


class SQLiteLedger:
    """Rows written with ``ctx.atomic()``: committed in the same transaction (and fsync) as the
    transition that records the step's outcome."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def setup(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            for table in TABLES:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS bench_{table} "
                    "(key TEXT PRIMARY KEY, order_id INTEGER, amount INTEGER)"
                )

        await self.store.run_in_transaction(create)

    async def write(self, ctx: StepContext, table: str, order_id: int, amount: int) -> None:
        # ctx.atomic: the row commits in the same transaction that records the step's outcome.
        sql = f"INSERT OR IGNORE INTO bench_{table} VALUES (?, ?, ?)"
        row = (ctx.idempotency_key, order_id, amount)
        ctx.atomic(lambda conn: conn.execute(sql, row))


class RedisLedger:
    """HSETNX per table in the store's Redis, sent in the store's pipelined batches: keyed by
    the idempotency key, so a retried step writes nothing twice."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def setup(self) -> None:
        pass

    async def write(self, ctx: StepContext, table: str, order_id: int, amount: int) -> None:
        key = ctx.idempotency_key
        hkey = f"{self.store.prefix}:bench:{table}"
        await self.store.execute("HSETNX", hkey, key, f"{order_id}:{amount}")


TABLES = ("reservations", "payments", "shipments", "releases", "refunds")


def build_saga(ledger: Ledger) -> Saga:
    saga = Saga("bench_checkout", version=1)

    @saga.step(retry=RetryPolicy(max_attempts=3), timeout=5.0)
    async def reserve_inventory(ctx: StepContext, order: Order) -> int:
        await ledger.write(ctx, "reservations", order.order_id, 1)
        return 1

    @reserve_inventory.compensation
    async def release_inventory(ctx: StepContext, order: Order, reserved: int | None) -> None:
        await ledger.write(ctx, "releases", order.order_id, 1)

    @saga.step(retry=RetryPolicy(max_attempts=3), timeout=5.0)
    async def process_payment(ctx: StepContext, order: Order) -> int:
        await ledger.write(ctx, "payments", order.order_id, order.amount_cents)
        return order.amount_cents

    @process_payment.compensation
    async def refund_payment(ctx: StepContext, order: Order, paid: int | None) -> None:
        await ledger.write(ctx, "refunds", order.order_id, paid or 0)

    @saga.step(retry=RetryPolicy(max_attempts=3), timeout=5.0)
    async def ship_order(ctx: StepContext, order: Order) -> str:
        if order.order_id % 10 == 9:
            raise StepFailed("Invalid shipping address")
        await ledger.write(ctx, "shipments", order.order_id, 0)
        return f"shipment-{order.order_id}"

    return saga


def make_ledger(store: SagaStore) -> Ledger:
    # Not "has run_in_transaction": the memory store has it too now (TransactionalStore),
    # with no connection to write tables through.
    if url_scheme(store.url) == "sqlite":
        return SQLiteLedger(store)
    if url_scheme(store.url) in ("redis", "rediss"):
        return RedisLedger(store)
    if url_scheme(store.url).split("+")[0] in ("postgresql", "postgres"):
        from pg_ledger import PostgresLedger  # its own asyncpg pool: see its docstring

        return PostgresLedger(store)
    return MemoryLedger()


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


async def drive(engine: Engine, saga: Saga, order_ids: range, concurrency: int) -> dict[str, Any]:
    """Run the sagas of ``order_ids``, ``concurrency`` at a time; latencies and outcomes."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    next_order = iter(order_ids)

    async def client() -> None:
        for order_id in next_order:
            began = time.perf_counter()
            saga_id = await engine.start(saga, Order(order_id=order_id, amount_cents=5000))
            record = await engine.wait(saga_id)
            latencies.append(time.perf_counter() - began)
            outcomes[record.status] = outcomes.get(record.status, 0) + 1

    began, cpu, kernel = time.time(), time.process_time(), kernel_cpu_s()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {
        "latencies": latencies,
        "outcomes": outcomes,
        "began": began,
        "ended": time.time(),
        "cpu_s": time.process_time() - cpu,
        "sys_s": kernel_cpu_s() - kernel,
    }


async def prepare(url: str, fresh: bool) -> None:
    """Before the K worker processes start: empty the log (``--fresh``), create the schema and
    the ledger's tables once, so the workers do not race on DDL."""
    if fresh and url_scheme(url).startswith("postgres"):
        from pg_ledger import drop_schema

        await drop_schema(url)
    store = open_store(url)
    async with store:
        ledger = make_ledger(store)
        if fresh and isinstance(ledger, RedisLedger):
            await store.purge()  # type: ignore[attr-defined]
        await ledger.setup()
        if hasattr(ledger, "close"):
            await ledger.close()


async def purge_redis(url: str) -> None:
    store = open_store(url)
    async with store:
        await store.purge()  # type: ignore[attr-defined]


async def run_worker(
    url: str,
    order_ids: range,
    concurrency: int,
    *,
    owner_id: str = "bench",
    fresh: bool = False,
    handshake: bool = False,
) -> dict[str, Any]:
    """One engine on ``url`` running ``order_ids``. With ``handshake`` (a worker process), print
    ``ready`` once set up and start when the parent writes a line to stdin."""
    if fresh and url_scheme(url).startswith("postgres"):
        from pg_ledger import drop_schema

        await drop_schema(url)
    store = open_store(url)
    engine = Engine(store, owner_id=owner_id)
    async with engine:
        ledger = make_ledger(store)
        if fresh and isinstance(ledger, RedisLedger):
            await store.purge()  # type: ignore[attr-defined]
        await ledger.setup()
        saga = build_saga(ledger)
        if handshake:
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        result = await drive(engine, saga, order_ids, concurrency)
        if hasattr(ledger, "close"):
            await ledger.close()
        if fresh and isinstance(ledger, RedisLedger):
            await store.purge()  # type: ignore[attr-defined]
    return result


def run_processes(args: argparse.Namespace, url: str, per_worker: int) -> list[dict[str, Any]]:
    """K worker processes (this script, ``--role worker``), started together once all are set
    up; each runs every K-th order with ``per_worker`` sagas at a time."""
    asyncio.run(prepare(url, args.fresh))
    procs = []
    for index in range(args.workers):
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--role=worker",
            f"--store={url}",
            f"--n={args.n}",
            f"--concurrency={per_worker}",
            f"--workers={args.workers}",
            f"--index={index}",
            f"--loop={args.loop}",
        ]
        procs.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"a worker failed to start (exit {proc.wait()})")
    for proc in procs:  # go
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed (exit {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    if args.fresh and url_scheme(url) in ("redis", "rediss"):
        asyncio.run(purge_redis(url))
    return results


def summarise(
    url: str, n: int, concurrency: int, workers: int, parts: list[dict[str, Any]]
) -> dict[str, Any]:
    latencies = sorted(x for part in parts for x in part["latencies"])
    outcomes: dict[str, int] = {}
    for part in parts:
        for status, count in part["outcomes"].items():
            outcomes[status] = outcomes.get(status, 0) + count
    elapsed = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
    expected_compensated = sum(1 for i in range(n) if i % 10 == 9)
    assert outcomes.get(SagaStatus.COMPENSATED, 0) == expected_compensated, outcomes
    assert outcomes.get(SagaStatus.SUCCEEDED, 0) == n - expected_compensated, outcomes
    return {
        "store": url.split("://", 1)[0],
        "n": n,
        "workers": workers,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sagas_per_s": round(n / elapsed, 1),
        **latency_ms(latencies),
        # CPU of the worker processes (all their threads) while the sagas ran: steadier than
        # sagas/s on a shared machine, and what sqlite_floor.py prints too.
        "cpu_us_per_saga": round(sum(p["cpu_s"] for p in parts) / n * 1e6, 1),
        # The kernel's part of it (the WAL's writes and fsyncs): what callgrind does not count.
        "sys_us_per_saga": round(sum(p["sys_s"] for p in parts) / n * 1e6, 1),
        "succeeded": outcomes.get(SagaStatus.SUCCEEDED, 0),
        "compensated": outcomes.get(SagaStatus.COMPENSATED, 0),
    }


def run_loop(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory://", help="saga store URL")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="sagas in flight per worker process (with --split: in total)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own engine (owner id bench-K) on the one store; "
        "the N sagas are shared out between them",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="share --concurrency out between the workers instead of giving each that many",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete a sqlite file first (redis: the prefix's keys, before and after; "
        "postgresql: drop the ?schema= first)",
    )
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="event loop to run on"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="run the store's floor (sqlite_floor.py / pg_floor.py / dicts) first, in this "
        "invocation, and print the ratio",
    )
    parser.add_argument(
        "--role", choices=["main", "worker"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Long-lived records make CPython's cyclic GC rescan the heap often; services tune this too.
    gc.set_threshold(50_000, 20, 100)
    if args.role == "worker":
        part = run_loop(
            args.loop,
            run_worker(
                args.store,
                range(args.index, args.n, args.workers),
                args.concurrency,
                owner_id=f"bench-{args.index}",
                handshake=True,
            ),
        )
        print(json.dumps(part))
        return

    url = args.store
    if url == "sqlite://":  # a throwaway file
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    if args.fresh and url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            path = url.removeprefix("sqlite:///") + suffix
            if os.path.exists(path):
                os.remove(path)
    if args.workers < 1 or args.concurrency < args.workers * args.split:
        parser.error("--workers must be >= 1 (and <= --concurrency with --split)")
    per_worker = args.concurrency // args.workers if args.split else args.concurrency
    floor = run_floor(url, args.n, per_worker * args.workers) if args.floor else None
    if args.workers == 1:
        parts = [run_loop(args.loop, run_worker(url, range(args.n), per_worker, fresh=args.fresh))]
    else:
        if url_scheme(url) == "memory":
            parser.error("--workers > 1 needs a store that several processes share")
        parts = run_processes(args, url, per_worker)
    result = summarise(url, args.n, per_worker, args.workers, parts)
    result["in_flight"] = per_worker * args.workers
    result["loop"] = args.loop
    if floor is not None:
        result = with_floor(result, floor)
    print_report(result)


def floor_url(url: str) -> str:
    """The PostgreSQL floor's URL: the engine's, on a schema of its own."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = query.get("schema", "sagaway") + "_floor"
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


def run_floor(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """The floor of the store ``url`` names, measured now: same N, same sagas in flight."""
    scheme = url_scheme(url)
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        import pg_floor

        return pg_floor.measure(floor_url(url), n, concurrency)
    import sqlite_floor

    if scheme == "sqlite":
        return sqlite_floor.measure("group", n, concurrency)
    if scheme == "memory":
        return sqlite_floor.measure("none", n, concurrency)
    raise SystemExit(f"no floor for {scheme}:// (memory, sqlite and postgresql have one)")


def with_floor(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the floor's figures and the ratios (1.0: as fast as the floor)."""
    return {
        **result,
        "floor": floor["benchmark"],
        "floor_sagas_per_s": floor["sagas_per_s"],
        "floor_p99_ms": floor["p99_ms"],
        "floor_cpu_us_per_saga": floor["cpu_us_per_saga"],
        "floor_sys_us_per_saga": floor.get("sys_us_per_saga"),
        "ratio": round(result["sagas_per_s"] / floor["sagas_per_s"], 3),
        "cpu_ratio": round(floor["cpu_us_per_saga"] / result["cpu_us_per_saga"], 3),
    }


if __name__ == "__main__":
    main()
