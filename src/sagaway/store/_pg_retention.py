"""The PostgreSQL saga log's retention statements: which sagas are prunable, pruning them,
pins (the ``PruningStore`` tier).

Prunable sagas are found through ``sagaway_instances_status (status, created_at, id)``, one
range per prunable status: a saga that finished before the cutoff was created before it, so
the scan reads finished sagas oldest-created first and passes over only the few that are
pinned or were written after the cutoff. An index on ``updated_at`` would find them directly
but cost every commit its HOT update (each commit writes ``updated_at``).
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]  # no stubs shipped

from sagaway.errors import SagaNotFound
from sagaway.state import PRUNABLE_STATUSES, SagaRecord
from sagaway.store._pg_ops import Statements, load

_PRUNABLE_SQL = ",".join(f"'{s.value}'" for s in PRUNABLE_STATUSES)


class RetentionStatements:
    def __init__(self, quoted_schema: str) -> None:
        s = quoted_schema
        inst = f"{s}.sagaway_instances"
        one_status = (
            f"(SELECT id, updated_at FROM {inst} WHERE status = '{{status}}' "
            "AND created_at < $1 AND updated_at < $1 AND NOT pinned "
            "ORDER BY created_at, id LIMIT $2)"
        )
        self.prunable = (
            "SELECT id FROM ("
            + " UNION ALL ".join(one_status.format(status=st.value) for st in PRUNABLE_STATUSES)
            + ") x ORDER BY updated_at, id LIMIT $2"
        )
        # One statement, one transaction: the saga row is re-checked and deleted under its row
        # lock, and its rows go with it. The outbox has no saga_id index: it holds only the
        # messages not yet published, a few rows.
        with_rows = f"""), steps AS (
  DELETE FROM {s}.sagaway_steps WHERE saga_id IN (SELECT id FROM gone)
), events AS (
  DELETE FROM {s}.sagaway_events WHERE saga_id IN (SELECT id FROM gone)
), outbox AS (
  DELETE FROM {s}.sagaway_outbox WHERE saga_id IN (SELECT id FROM gone)
)
SELECT id FROM gone
"""
        self.prune = f"""
WITH gone AS (
  DELETE FROM {inst} WHERE id = ANY($1::text[]) AND status IN ({_PRUNABLE_SQL})
    AND NOT pinned AND updated_at < $2
  RETURNING id
{with_rows}"""
        # The same choice as ``prunable``, but each candidate row is locked as it is chosen
        # and deleted in the same statement; rows another pruner holds are skipped, not waited
        # for: concurrent workers take disjoint batches.
        locked = [
            f"s{i} AS ({one_status.format(status=st.value)[1:-1]} FOR UPDATE SKIP LOCKED)"
            for i, st in enumerate(PRUNABLE_STATUSES)
        ]
        chosen = " UNION ALL ".join(f"SELECT id, updated_at FROM s{i}" for i in range(len(locked)))
        self.prune_next = f"""
WITH {", ".join(locked)},
picked AS (SELECT id FROM ({chosen}) x ORDER BY updated_at, id LIMIT $2),
gone AS (
  DELETE FROM {inst} WHERE id IN (SELECT id FROM picked)
  RETURNING id
{with_rows}"""
        self.pin = f"UPDATE {inst} SET pinned = $2 WHERE id = $1"


async def prunable(
    conn: asyncpg.Connection, sql: RetentionStatements, finished_before: float, limit: int
) -> list[str]:
    return [row[0] for row in await conn.fetch(sql.prunable, finished_before, limit)]


async def prune(
    conn: asyncpg.Connection, sql: RetentionStatements, ids: list[str], finished_before: float
) -> list[str]:
    return [row[0] for row in await conn.fetch(sql.prune, ids, finished_before)]


async def prune_next(
    conn: asyncpg.Connection, sql: RetentionStatements, finished_before: float, limit: int
) -> list[str]:
    return [row[0] for row in await conn.fetch(sql.prune_next, finished_before, limit)]


async def set_pinned(
    conn: asyncpg.Connection,
    sql: RetentionStatements,
    statements: Statements,
    saga_id: str,
    pinned: bool,
) -> SagaRecord:
    async with conn.transaction():
        if await conn.execute(sql.pin, saga_id, pinned) == "UPDATE 0":
            raise SagaNotFound(saga_id)
        record = await load(conn, statements, saga_id, history=False)
    assert record is not None
    return record
