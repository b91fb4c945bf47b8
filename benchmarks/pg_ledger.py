"""The benchmark's step effects on PostgreSQL: rows in the saga log's own database and schema.

Why a pool of its own rather than the store's batches: this is what a participant service does
(its own connection, its own short transaction per effect, keyed by the step's idempotency key
so a retried step writes nothing twice), and it keeps the store's write path exactly as
production uses it. Each write is one autocommit ``INSERT ... ON CONFLICT DO NOTHING``: one
round trip; concurrent ones share WAL flushes on the server.
"""

from __future__ import annotations

from typing import Any

import asyncpg

TABLES = ("reservations", "payments", "shipments", "releases", "refunds")


class PostgresLedger:
    def __init__(self, store: Any, pool_size: int = 16) -> None:
        self.dsn: str = store.settings.dsn
        self.schema: str = store.schema
        self.pool_size = pool_size
        self.pool: Any = None
        self.sql: dict[str, str] = {}

    async def setup(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_size, max_size=self.pool_size
        )
        async with self.pool.acquire() as conn:
            for table in TABLES:
                name = f'"{self.schema}".bench_{table}'
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} "
                    "(key text PRIMARY KEY, order_id integer, amount integer)"
                )
                self.sql[table] = f"INSERT INTO {name} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"

    async def write(self, table: str, key: str, order_id: int, amount: int) -> None:
        await self.pool.execute(self.sql[table], key, order_id, amount)

    async def close(self) -> None:
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
