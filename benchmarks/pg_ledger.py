"""The benchmark's step effects on PostgreSQL: rows in the saga log's own database and schema.

Why a pool of its own rather than the store's batches: this is what a participant service does
(its own connections and transactions; every row keyed by the step's idempotency key, so a
retried step writes nothing twice), and it keeps the store's write path exactly as production
uses it. Like the store, the ledger group-commits: writes queued while a flush is in flight go
out together as one statement (a data-modifying CTE inserting into each table from arrays), and
each caller resumes only once that statement has committed, so an effect is durable before the
step that made it reports success. Measured: one autocommit INSERT per effect halved the
benchmark's throughput (three extra commits per saga).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from sagaway import StepContext

TABLES = ("reservations", "payments", "shipments", "releases", "refunds")


class PostgresLedger:
    def __init__(self, store: Any, in_flight: int = 2) -> None:
        self.dsn: str = store.settings.dsn
        self.schema: str = store.schema
        self.pool: Any = None
        self.queue: list[tuple[str, str, int, int, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(in_flight)
        self.in_flight = in_flight
        self.flusher: asyncio.Task[None] | None = None
        self.sql = ""

    async def setup(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.in_flight, max_size=self.in_flight
        )
        inserts = []
        async with self.pool.acquire() as conn:
            for table in TABLES:
                name = f'"{self.schema}".bench_{table}'
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} "
                    "(key text PRIMARY KEY, order_id integer, amount integer)"
                )
                inserts.append(
                    f"{table} AS (INSERT INTO {name} SELECT key, order_id, amount FROM r "
                    f"WHERE t = '{table}' ON CONFLICT DO NOTHING)"
                )
        self.sql = (
            "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) "
            f"AS r(t, key, order_id, amount)), {', '.join(inserts)} SELECT 1"
        )
        self.flusher = asyncio.create_task(self._flush_loop())

    async def write(self, ctx: StepContext, table: str, order_id: int, amount: int) -> None:
        key = ctx.idempotency_key
        future = asyncio.get_running_loop().create_future()
        self.queue.append((table, key, order_id, amount, future))
        self.wake.set()
        await future

    async def _flush_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self.slots.acquire()
                batch, self.queue = self.queue, []
                asyncio.create_task(self._flush(batch))  # noqa: RUF006 - awaited via futures

    async def _flush(self, batch: list[tuple[str, str, int, int, asyncio.Future[None]]]) -> None:
        try:
            columns = [list(c) for c in zip(*(row[:4] for row in batch), strict=True)]
            await self.pool.execute(self.sql, *columns)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for *_, future in batch:
                if not future.done():
                    future.set_result(None)
        finally:
            self.slots.release()

    async def close(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
        if self.pool is not None:
            await self.pool.close()


async def drop_schema(url: str) -> None:
    """``--fresh``: start from an empty saga log (the store recreates the schema)."""
    from sagaway.store.postgres import parse_url

    settings = parse_url(url)
    conn = await asyncpg.connect(settings.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
    finally:
        await conn.close()
