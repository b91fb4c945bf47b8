"""Engine throughput: N three-step checkout-like sagas, C at a time, on one saga store.

Each step writes a row to a table in the same database as the saga log (on SQLite through the
store's group commit, so the effect is durable with the batch); every 10th saga fails at step 3
and compensates. Prints a table, then one JSON line:

    python benchmarks/engine_throughput.py --store sqlite:///bench.db --n 10000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import tempfile
import time
from typing import Any, Protocol

from pydantic import BaseModel

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.store import SagaStore, open_store


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
    if hasattr(store, "run_in_transaction"):
        return SQLiteLedger(store)
    if url_scheme(store.url) in ("redis", "rediss"):
        return RedisLedger(store)
    if url_scheme(store.url).split("+")[0] in ("postgresql", "postgres"):
        from pg_ledger import PostgresLedger  # its own asyncpg pool: see its docstring

        return PostgresLedger(store)
    return MemoryLedger()


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


async def run(url: str, n: int, concurrency: int, fresh: bool = False) -> dict[str, Any]:
    if fresh and url_scheme(url).startswith("postgres"):
        from pg_ledger import drop_schema

        await drop_schema(url)
    store = open_store(url)
    engine = Engine(store, owner_id="bench")
    async with engine:
        ledger = make_ledger(store)
        if fresh and isinstance(ledger, RedisLedger):
            await store.purge()  # type: ignore[attr-defined]
        await ledger.setup()
        saga = build_saga(ledger)
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        next_order = iter(range(n))

        async def client() -> None:
            for order_id in next_order:
                began = time.perf_counter()
                saga_id = await engine.start(saga, Order(order_id=order_id, amount_cents=5000))
                record = await engine.wait(saga_id)
                latencies.append(time.perf_counter() - began)
                outcomes[record.status] = outcomes.get(record.status, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        if hasattr(ledger, "close"):
            await ledger.close()
        if fresh and isinstance(ledger, RedisLedger):
            await store.purge()  # type: ignore[attr-defined]
    latencies.sort()
    expected_compensated = sum(1 for i in range(n) if i % 10 == 9)
    assert outcomes.get(SagaStatus.COMPENSATED, 0) == expected_compensated, outcomes
    assert outcomes.get(SagaStatus.SUCCEEDED, 0) == n - expected_compensated, outcomes
    return {
        "store": url.split("://", 1)[0],
        "n": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sagas_per_s": round(n / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "succeeded": outcomes.get(SagaStatus.SUCCEEDED, 0),
        "compensated": outcomes.get(SagaStatus.COMPENSATED, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="memory://", help="saga store URL")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete a sqlite file first (redis: the prefix's keys, before and after; "
        "postgresql: drop the ?schema= first)",
    )
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="event loop to run on"
    )
    args = parser.parse_args()
    url = args.store
    if url == "sqlite://":  # a throwaway file
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    if args.fresh and url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            path = url.removeprefix("sqlite:///") + suffix
            if os.path.exists(path):
                os.remove(path)
    # Long-lived records make CPython's cyclic GC rescan the heap often; services tune this too.
    gc.set_threshold(50_000, 20, 100)
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(run(url, args.n, args.concurrency, args.fresh))
    else:
        result = asyncio.run(run(url, args.n, args.concurrency, args.fresh))
    result["loop"] = args.loop
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
