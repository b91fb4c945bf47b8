"""Compaction on PostgreSQL: a finished saga's step rows and events folded into its row.

A three-step saga leaves ~3 step rows and ~8 events, each a heap tuple (24 bytes of header
alone) with a primary-key entry: ~2.9 KB of the ~4.6 KB a finished saga took. Right after a
batch statement that finished sagas (SUCCEEDED, COMPENSATED or FAILED) has committed, the store
runs :data:`COMPACT` for them on the same connection: one statement, so atomic on its own. It
writes ``packed``, a jsonb ``[steps, events]`` whose elements are exactly the arrays the
readers build from rows (``_pg_ops``), and deletes those rows.

It is a second write, after the transition is durable: a crash (or a lost connection) between
the two leaves a finished saga with its rows, which every reader handles, so nothing is lost
and nothing waits on it; such a saga just stays uncompacted. A saga already packed (an
operator retried a FAILED one) is not compacted again: its later rows stay rows, read after
the packed ones. The statement re-reads the status under the row lock, and its DELETEs remove
only the rows its snapshot packed: an event another transaction adds meanwhile stays a row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped]  # no stubs shipped

from sagaway.state import Change, SagaStatus

log = logging.getLogger("sagaway.store.postgres")

FINISHED = frozenset({SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED})

COMPACT = """
WITH d AS (
  SELECT i.id FROM {s}.sagaway_instances i
  WHERE i.id = ANY($1::text[]) AND i.packed IS NULL
    AND i.status IN ('SUCCEEDED', 'COMPENSATED', 'FAILED')
  FOR UPDATE
), p AS (
  SELECT d.id, jsonb_build_array(
    coalesce((SELECT jsonb_agg(jsonb_build_array(s.name, s.phase, s.status, s.attempts,
        s.output, s.error, s.uncertain, s.started_at, s.finished_at))
      FROM {s}.sagaway_steps s WHERE s.saga_id = d.id), '[]'::jsonb),
    coalesce((SELECT jsonb_agg(jsonb_build_array(e.at, e.type, e.step, e.phase, e.attempt,
        e.detail) ORDER BY e.seq)
      FROM {s}.sagaway_events e WHERE e.saga_id = d.id), '[]'::jsonb)) AS v
  FROM d
), u AS (
  UPDATE {s}.sagaway_instances i SET packed = p.v FROM p WHERE i.id = p.id RETURNING i.id
), ds AS (
  DELETE FROM {s}.sagaway_steps s USING d WHERE s.saga_id = d.id
), de AS (
  DELETE FROM {s}.sagaway_events e USING d WHERE e.saga_id = d.id
)
SELECT count(*) FROM u
"""

# A saga's step rows as the readers decode them: the packed ones a row does not replace
# (same name and phase), then the rows.
STEPS_JSON = """(SELECT json_agg(x)::text FROM (
  SELECT p.v AS x FROM jsonb_array_elements(i.packed->0) p(v)
  WHERE NOT EXISTS (SELECT 1 FROM {s}.sagaway_steps r
    WHERE r.saga_id = i.id AND r.name = p.v->>0 AND r.phase = p.v->>1)
  UNION ALL
  SELECT jsonb_build_array(s.name, s.phase, s.status, s.attempts, s.output, s.error,
    s.uncertain, s.started_at, s.finished_at)
  FROM {s}.sagaway_steps s WHERE s.saga_id = i.id) q)"""

# A saga's history: the packed events in their order, then the rows in theirs.
HISTORY_JSON = """(SELECT json_agg(x ORDER BY part, n)::text FROM (
  SELECT p.v AS x, 0 AS part, p.n AS n
  FROM jsonb_array_elements(i.packed->1) WITH ORDINALITY p(v, n)
  UNION ALL
  SELECT jsonb_build_array(e.at, e.type, e.step, e.phase, e.attempt, e.detail), 1, e.seq
  FROM {s}.sagaway_events e WHERE e.saga_id = i.id) q)"""

# The forward steps a saga has started (for cancel_refusal), packed or not.
STARTED_STEPS = """SELECT s.name FROM {s}.sagaway_steps s WHERE s.saga_id = $1
  AND s.phase = 'forward'
UNION
SELECT p.v->>0 FROM {s}.sagaway_instances i, jsonb_array_elements(i.packed->0) p(v)
WHERE i.id = $1 AND p.v->>1 = 'forward'"""


def finished_ids(commits: Sequence[tuple[str, str | None, Change]], applied: set[str]) -> list[str]:
    """The sagas a batch's applied commits finished."""
    return [c[0] for c in commits if c[2].status in FINISHED and c[0] in applied]


async def compact_after(conn: asyncpg.Connection, statement: str, ids: list[str]) -> None:
    """Compact ``ids`` (see the module docstring). A failure is logged, not raised: the
    transitions are durable already, and an uncompacted saga reads back the same."""
    try:
        await conn.fetchval(statement, ids)
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("compacting %d finished sagas failed (they keep their rows): %s", len(ids), exc)
