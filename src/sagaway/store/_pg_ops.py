"""The PostgreSQL saga log's statements: SQL text, the arrays it takes, the rows it returns.

The hot path is one statement, a data-modifying CTE taking one array per column, so a whole
group-commit batch (every create and every commit queued while the previous batch was in
flight) is *one* statement: one round trip, one WAL flush, atomic. Each commit's
lease fence is part of its UPDATE's join condition, so a fenced-out commit simply matches no row,
and its steps and events (joined on the UPDATE's RETURNING) are not written either: per-operation
isolation without savepoints. The final SELECT reports, per operation, whether it was applied
and, if not, whether the saga exists at all (``SagaNotFound`` versus ``LeaseLost``).

A batch may hold at most one commit per saga and one create per idempotency key (the store
defers duplicates to the next batch): ``UPDATE ... FROM`` joins a row once, and a key inserted
by the same statement is invisible to that statement's lookup.

Other operations (claim, acquire, renewals, cancel requests, reads) are rare by comparison and
run on their own pooled connection, as single statements where that is natural.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs shipped

from sagaway.errors import SagaNotFound
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    SagaRecord,
    SagaStatus,
    StepRecord,
    cancel_refusal,
    refused_cancel,
)
from sagaway.store._codec import SAGA_STATUS as _SAGA_STATUS
from sagaway.store._codec import dumps as _dumps
from sagaway.store._pg_compact import COMPACT, HISTORY_JSON, STARTED_STEPS, STEPS_JSON
from sagaway.store._pg_schema import ACTIVE_SQL, saga_from_row

_COLS = (
    "i.id, i.name, i.version, i.status, i.input::text, i.idempotency_key, i.owner, "
    "i.lease_expires_at, i.deadline_at, i.cancel_requested, i.error, i.created_at, i.updated_at, "
    "i.waiting_for, i.parked_until, i.pinned"
)
_OUTBOX_COLS = "id, saga_id, topic, body::text, headers::text, created_at"
_STEP_ARRAYS = (
    "unnest($A::text[], $B::text[], $C::text[], $D::text[], $E::int[], $F::text[], $G::text[], "
    "$H::bool[], $I::float8[], $J::float8[]) AS s(saga_id, name, phase, status, attempts, "
    "output, error, uncertain, started_at, finished_at)"
)
_EVENT_ARRAYS = (
    "unnest($A::text[], $B::int[], $C::float8[], $D::text[], $E::text[], $F::text[], $G::int[], "
    "$H::text[]) AS e(saga_id, k, at, type, step, phase, attempt, detail)"
)
_STEP_UPSERT = (
    "INSERT INTO {s}.sagaway_steps (saga_id, name, phase, status, attempts, output, error, "
    "uncertain, started_at, finished_at) SELECT s.saga_id, s.name, s.phase, s.status, "
    "s.attempts, s.output::jsonb, s.error, s.uncertain, s.started_at, s.finished_at FROM "
    "{steps} WHERE s.saga_id IN (SELECT id FROM {src}) "
    "ON CONFLICT (saga_id, name, phase) DO UPDATE SET status = excluded.status, "
    "attempts = excluded.attempts, output = excluded.output, error = excluded.error, "
    "uncertain = excluded.uncertain, started_at = excluded.started_at, "
    "finished_at = excluded.finished_at"
)


def _params(template: str, first: int) -> str:
    """Number the $A, $B... placeholders of an array template from ``$first`` on."""
    for offset, letter in enumerate("ABCDEFGHIJ"):
        template = template.replace(f"${letter}", f"${first + offset}")
    return template


def _write_batch_sql(s: str, *, remote: bool) -> str:
    """One statement for a whole batch, creates and commits together: $1-$11 new sagas,
    $12-$20 changes, $21-$30 the step rows of both, $31-$38 their events, $39 the NOTIFY
    channel; with ``remote``, $40-$42 each change's park (what for, until when, and 1 park /
    2 unpark / 0 neither) and $43-$49 the outbox messages (with the saga whose change writes
    each one). A change with unless_cancelled
    (guard) is fenced by the cancel flag too. A change without a status keeps both status and
    error (as apply_change does). A new saga's events are numbered from 0; a change's from the
    history length its UPDATE returns. Creating a PENDING saga, or handing back the lease of
    an active one (an operator's retry), wakes idle workers; parking one does not (it is not
    claimable before its deadline). Outbox rows join on the applied UPDATEs, so a fenced-out
    change writes none."""
    inst = f"{s}.sagaway_instances"
    events = f"{s}.sagaway_events"
    park_cols = ", $40::text[], $41::float8[], $42::int[], $50::int8[], $51::float8[]"
    park_names = ", pfor, puntil, pmode, tfence, tuntil"
    # A take (Change.take, $50-$51) leases the row, fenced on its xmin as read, not the owner.
    fence = "(uop.owner IS NULL OR i.owner = uop.owner)"
    if remote:
        fence = f"""CASE WHEN uop.tfence IS NULL THEN {fence} ELSE i.xmin::text::int8 = uop.tfence
    AND (i.owner IS NULL OR i.owner = uop.owner OR i.lease_expires_at < uop.at) END"""
    else:
        park_cols = park_names = ""
    if remote:
        lease_sets = """owner = CASE WHEN uop.release OR uop.pmode = 1 THEN NULL
      WHEN uop.tfence IS NOT NULL THEN uop.owner ELSE i.owner END,
    lease_expires_at = CASE WHEN uop.release OR uop.pmode = 1 THEN NULL
      WHEN uop.tfence IS NOT NULL THEN uop.tuntil ELSE i.lease_expires_at END,
    waiting_for = CASE uop.pmode WHEN 1 THEN uop.pfor WHEN 2 THEN NULL ELSE i.waiting_for END,
    parked_until = CASE uop.pmode WHEN 1 THEN uop.puntil WHEN 2 THEN NULL
      ELSE i.parked_until END,"""
        outbox = f"""
), ob AS (
  INSERT INTO {s}.sagaway_outbox (id, saga_id, topic, body, headers, created_at)
  SELECT o.id, o.saga_id, o.topic, o.body::jsonb, o.headers::jsonb, o.at
  FROM unnest($43::text[], $44::text[], $45::text[], $46::text[], $47::text[], $48::text[],
    $49::float8[]) AS o(written_by, id, saga_id, topic, body, headers, at)
  WHERE o.written_by IN (SELECT id FROM upd)
  ON CONFLICT (id) DO UPDATE SET saga_id = excluded.saga_id, topic = excluded.topic,
    body = excluded.body, headers = excluded.headers, created_at = excluded.created_at"""
    else:
        lease_sets = """owner = CASE WHEN uop.release THEN NULL ELSE i.owner END,
    lease_expires_at = CASE WHEN uop.release THEN NULL ELSE i.lease_expires_at END,"""
        outbox = ""
    return f"""
WITH cop AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::int[])
    AS o(id, name, version, status, input, key, owner, lease, deadline, at, n)
), ins AS (
  INSERT INTO {inst} (id, name, version, status, input, idempotency_key, owner,
    lease_expires_at, deadline_at, created_at, updated_at, events)
  SELECT id, name, version, status, input::jsonb, key, owner, lease, deadline, at, at, n FROM cop
  ON CONFLICT (idempotency_key) DO NOTHING
  RETURNING id, status
), uop AS (
  SELECT * FROM unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::float8[],
    $17::bool[], $18::bool[], $19::int[], $20::bool[]{park_cols})
    AS o(id, owner, status, error, at, release, clear, n, guard{park_names})
), upd AS (
  UPDATE {inst} i SET status = coalesce(uop.status, i.status),
    error = CASE WHEN uop.status IS NULL THEN i.error ELSE uop.error END,
    updated_at = uop.at,
    {lease_sets}
    cancel_requested = i.cancel_requested AND NOT uop.clear,
    events = i.events + uop.n
  FROM uop WHERE i.id = uop.id AND {fence}
    AND NOT (uop.guard AND i.cancel_requested)
  RETURNING i.id, i.events - uop.n AS base, uop.release AND i.status IN ({ACTIVE_SQL}) AS freed
), written AS (
  SELECT id, 0 AS base FROM ins UNION ALL SELECT id, base FROM upd
), st AS (
  {_STEP_UPSERT.format(s=s, steps=_params(_STEP_ARRAYS, 21), src="written")}
), ev AS (
  INSERT INTO {events} (saga_id, seq, at, type, step, phase, attempt, detail)
  SELECT e.saga_id, w.base + e.k, e.at, e.type, e.step, e.phase, e.attempt, e.detail
  FROM {_params(_EVENT_ARRAYS, 31)} JOIN written w ON w.id = e.saga_id{outbox}
), woke AS (
  SELECT pg_notify($39, '') FROM (
    SELECT 1 FROM ins WHERE ins.status = 'PENDING' UNION ALL SELECT 1 FROM upd WHERE upd.freed
  ) x
)
SELECT r.* FROM (
  SELECT true AS is_create, cop.id, ins.id IS NOT NULL AS done,
    (SELECT x.id FROM {inst} x WHERE x.idempotency_key = cop.key) AS existing
  FROM cop LEFT JOIN ins ON ins.id = cop.id
  UNION ALL
  SELECT false, uop.id, upd.id IS NOT NULL,
    CASE WHEN upd.id IS NULL THEN (SELECT x.id FROM {inst} x WHERE x.id = uop.id) END
  FROM uop LEFT JOIN upd ON upd.id = uop.id
) r CROSS JOIN (SELECT count(*) FROM woke) w
"""


class Statements:
    """Every statement, with the schema name filled in once."""

    def __init__(self, quoted_schema: str) -> None:
        s = quoted_schema
        inst = f"{s}.sagaway_instances"
        events = f"{s}.sagaway_events"

        # One statement for a whole batch (see _write_batch_sql).
        self.write_batch = _write_batch_sql(s, remote=False)
        # The same with the parked-saga columns and the outbox ($40-$48), for a batch that
        # has a Change with park, unpark or outbox messages: every other batch keeps the
        # statement it had before they existed, at no cost.
        self.write_batch_remote = _write_batch_sql(s, remote=True)
        # Steps and history come from rows and, once a saga is compacted, its packed value.
        steps_json = STEPS_JSON.format(s=s)
        self.load = (
            f"SELECT {_COLS}, {steps_json}, "
            f"CASE WHEN $2 THEN {HISTORY_JSON.format(s=s)} END FROM {inst} i WHERE i.id = $1"
        )
        # The fence of Change.take: xmin, the transaction that wrote the row version read,
        # changes with every write of the row (no column to keep up to date).
        self.peek = (
            f"SELECT {_COLS}, {steps_json}, NULL, i.xmin::text::int8 FROM {inst} i WHERE i.id = $1"
        )
        self.compact = COMPACT.format(s=s)
        # SKIP LOCKED: concurrent claims (any process) pass over each other's rows instead of
        # waiting, and a row whose lease changed meanwhile is re-checked under the lock.
        self.claim = f"""
WITH free AS (
  SELECT i.id FROM {inst} i
  WHERE i.status IN ({ACTIVE_SQL}) AND i.waiting_for IS NULL
    AND (i.name, i.version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
    AND (i.owner IS NULL OR i.lease_expires_at IS NULL OR i.lease_expires_at < $3
         OR ($4 AND i.owner = $5))
  ORDER BY i.created_at, i.id LIMIT $6
  FOR UPDATE SKIP LOCKED
), due AS (
  -- Parked sagas whose time has come, through the parked index: those not due (any number
  -- of them) are never read.
  SELECT i.id FROM {inst} i
  WHERE i.waiting_for IS NOT NULL AND i.parked_until <= $3
    AND i.status IN ({ACTIVE_SQL})
    AND (i.name, i.version) IN (SELECT * FROM unnest($1::text[], $2::int[]))
    AND (i.owner IS NULL OR i.lease_expires_at IS NULL OR i.lease_expires_at < $3
         OR ($4 AND i.owner = $5))
  ORDER BY i.parked_until, i.id LIMIT $6
  FOR UPDATE SKIP LOCKED
), c AS (
  SELECT id FROM (SELECT id FROM free UNION ALL SELECT id FROM due) both_ LIMIT $6
), upd AS (
  UPDATE {inst} i SET owner = $5, lease_expires_at = $7, updated_at = $3, events = i.events + 1
  FROM c WHERE i.id = c.id
  RETURNING i.*
), ev AS (
  INSERT INTO {events} (saga_id, seq, at, type, detail)
  SELECT id, events - 1, $3, '{EventType.SAGA_CLAIMED.value}', $5 FROM upd
)
SELECT {_COLS}, {steps_json} FROM upd i ORDER BY i.created_at, i.id
"""
        self.lock_row = (
            f"SELECT status, owner, lease_expires_at FROM {inst} WHERE id = $1 FOR UPDATE"
        )
        self.take_lease = (
            f"UPDATE {inst} SET owner = $2, lease_expires_at = $3, updated_at = $4, "
            "events = events + $5 WHERE id = $1 RETURNING events - $5"
        )
        self.cancel_facts = f"SELECT status, cancel_requested FROM {inst} WHERE id = $1 FOR UPDATE"
        self.started_steps = STARTED_STEPS.format(s=s)
        self.fence_facts = (
            f"SELECT owner, cancel_requested, xmin::text::int8 FROM {inst} WHERE id = $1"
        )
        self.count_event = (
            f"UPDATE {inst} SET events = events + 1 WHERE id = $1 RETURNING events - 1"
        )
        self.flag_cancel = (
            f"UPDATE {inst} SET cancel_requested = true, updated_at = $2, events = events + 1 "
            "WHERE id = $1 RETURNING events - 1"
        )
        self.insert_event = (
            f"INSERT INTO {events} (saga_id, seq, at, type, step, phase, attempt, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        self.renew = (
            f"UPDATE {inst} SET lease_expires_at = $2 WHERE owner = $1 "
            f"AND status IN ({ACTIVE_SQL}) RETURNING id, cancel_requested"
        )
        self.counts = f"SELECT status, count(*) FROM {inst} GROUP BY status"
        # The sagas not parked, grouped (through sagaway_instances_free, as claims read
        # them); then the parked ones' definitions, skipping from one to the next through
        # sagaway_instances_parked_definition, those not known ($1, $2: names and versions)
        # kept; then a count for each (a statement of its own: planned for the name at hand
        # it reads that definition's sagas through the index, where a count inside the same
        # statement was planned for any name: a seq scan).
        stranded = (
            "(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at < $1 OR owner = $2)"
        )
        self.stranded_not_parked = (
            f"SELECT name, version, count(*) FROM {inst} WHERE status IN ({ACTIVE_SQL}) "
            f"AND waiting_for IS NULL AND {stranded} GROUP BY name, version"
        )
        parked = f"FROM {inst} WHERE waiting_for IS NOT NULL"
        self.unknown_parked = (
            "WITH RECURSIVE defs AS ("
            f"(SELECT name, version {parked} ORDER BY name, version LIMIT 1) UNION ALL "
            f"SELECT n.name, n.version FROM defs d CROSS JOIN LATERAL (SELECT name, version "
            f"{parked} AND (name, version) > (d.name, d.version) ORDER BY name, version "
            "LIMIT 1) n) SELECT d.name, d.version FROM defs d WHERE NOT EXISTS (SELECT 1 FROM "
            "unnest($1::text[], $2::int[]) AS k(name, version) "
            "WHERE k.name = d.name AND k.version = d.version)"
        )
        self.stranded_parked = (
            f"SELECT count(*) {parked} AND name = $3 AND version = $4 "
            f"AND status IN ({ACTIVE_SQL}) AND {stranded}"
        )
        self.find_ids = f"SELECT id FROM {inst} WHERE starts_with(id, $1) ORDER BY id LIMIT $2"
        # starts_with, not LIKE: a prefix is text, "%" and "_" in it match themselves.
        self.waiting_where = (
            f"FROM {inst} i WHERE i.waiting_for IS NOT NULL AND starts_with(i.waiting_for, $1)"
        )
        outbox = f"{s}.sagaway_outbox"
        self.outbox_pending = (
            f"SELECT {_OUTBOX_COLS} FROM {outbox} WHERE ($2::float8 IS NULL OR created_at < $2) "
            "ORDER BY created_at, id LIMIT $1"
        )
        self.outbox_delete = f"DELETE FROM {outbox} WHERE id = ANY($1::text[])"
        self.outbox_count = f"SELECT count(*) FROM {outbox}"
        self.list_where = (
            f"FROM {inst} i WHERE ($1::text IS NULL OR i.status = $1) "
            "AND ($2::text IS NULL OR i.name = $2)"
        )


# -- arrays for the batch statements ----------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _step_arrays(pairs: Iterable[tuple[str, Iterable[StepRecord]]]) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(10)]
    for saga_id, steps in pairs:
        # Last write wins for a (step, phase) repeated in one change, as in apply_change; one
        # row per key also keeps ON CONFLICT DO UPDATE from touching a row twice.
        unique = {(s.name, s.phase): s for s in steps}
        for s in unique.values():
            cols[0].append(saga_id)
            cols[1].append(s.name)
            cols[2].append(s.phase.value)
            cols[3].append(s.status.value)
            cols[4].append(s.attempts)
            cols[5].append(_json(s.output))
            cols[6].append(s.error)
            cols[7].append(s.uncertain)
            cols[8].append(s.started_at)
            cols[9].append(s.finished_at)
    return cols


def _event_arrays(pairs: Iterable[tuple[str, Sequence[Event]]]) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(8)]
    for saga_id, events in pairs:
        for k, e in enumerate(events):
            cols[0].append(saga_id)
            cols[1].append(k)
            cols[2].append(e.at)
            cols[3].append(e.type.value)
            cols[4].append(e.step)
            cols[5].append(None if e.phase is None else e.phase.value)
            cols[6].append(e.attempt)
            cols[7].append(e.detail)
    return cols


CommitOp = tuple[str, str | None, Change, float]


def is_remote(change: Change) -> bool:
    """True when a change needs ``write_batch_remote`` (it parks, unparks or sends)."""
    return change.park is not None or change.unpark or bool(change.outbox) or bool(change.take)


def remote_args(commits: Sequence[CommitOp]) -> list[list[Any]]:
    """The extra arrays of ``write_batch_remote``: each change's park, then the outbox rows.

    One row per message id (ON CONFLICT DO UPDATE may not touch a row twice in one
    statement): within a change the last one wins, as apply_change would have it; the store
    never puts two changes writing one id in the same batch (``PostgresStore._take_batch``)."""
    pfor: list[str | None] = []
    puntil: list[float | None] = []
    pmode: list[int] = []
    out: list[tuple[str, OutboxMessage]] = []
    for saga_id, _, change, _ in commits:
        park = change.park
        pfor.append(None if park is None else park.waiting_for)
        puntil.append(None if park is None else park.until)
        pmode.append(1 if park is not None else 2 if change.unpark else 0)
        if change.outbox:
            out += [(saga_id, m) for m in {m.id: m for m in change.outbox}.values()]
    return [
        pfor,
        puntil,
        pmode,
        [w for w, _ in out],
        [m.id for _, m in out],
        [m.saga_id for _, m in out],
        [m.topic for _, m in out],
        [_dumps(m.body) for _, m in out],
        [_dumps(m.headers) for _, m in out],
        [m.created_at for _, m in out],
        [None if c[2].take is None else c[2].take.fence for c in commits],
        [None if c[2].take is None else c[2].take.until for c in commits],
    ]


def write_args(news: Sequence[NewSaga], commits: Sequence[CommitOp], channel: str) -> list[Any]:
    """The arrays of ``write_batch``: one list per column."""
    return [
        [n.id for n in news],
        [n.name for n in news],
        [n.version for n in news],
        [n.status.value for n in news],
        [_dumps(n.input) for n in news],
        [n.idempotency_key for n in news],
        [n.owner for n in news],
        [n.lease_expires_at for n in news],
        [n.deadline_at for n in news],
        [n.at for n in news],
        [len(n.events) for n in news],
        [c[0] for c in commits],
        [c[1] for c in commits],
        [None if c[2].status is None else c[2].status.value for c in commits],
        [c[2].error for c in commits],
        [c[3] for c in commits],
        [c[2].release_lease for c in commits],
        [c[2].clear_cancel for c in commits],
        [len(c[2].events) for c in commits],
        [c[2].unless_cancelled for c in commits],
        *_step_arrays([*((n.id, n.steps) for n in news), *((c[0], c[2].steps) for c in commits)]),
        *_event_arrays(
            [*((n.id, n.events) for n in news), *((c[0], c[2].events) for c in commits)]
        ),
        channel,
    ]


# -- the rarer operations, each on a connection of its own --------------------------------------


async def load(
    conn: asyncpg.Connection, sql: Statements, saga_id: str, history: bool
) -> SagaRecord | None:
    row = await conn.fetchrow(sql.load, saga_id, history)
    return None if row is None else saga_from_row(row)


async def claim(
    conn: asyncpg.Connection,
    sql: Statements,
    owner: str,
    now: float,
    lease_seconds: float,
    definitions: Sequence[tuple[str, int]],
    limit: int,
    include_own: bool,
) -> list[SagaRecord]:
    names = [d[0] for d in definitions]
    versions = [d[1] for d in definitions]
    rows = await conn.fetch(
        sql.claim, names, versions, now, include_own, owner, limit, now + lease_seconds
    )
    return [saga_from_row(r) for r in rows]


async def _append_event(
    conn: asyncpg.Connection, sql: Statements, saga_id: str, seq: int, e: Event
) -> None:
    phase = None if e.phase is None else e.phase.value
    await conn.execute(
        sql.insert_event, saga_id, seq, e.at, e.type.value, e.step, phase, e.attempt, e.detail
    )


async def acquire(
    conn: asyncpg.Connection,
    sql: Statements,
    saga_id: str,
    owner: str,
    now: float,
    lease_seconds: float,
    statuses: Sequence[SagaStatus],
    event: Event | None,
) -> SagaRecord | None:
    async with conn.transaction():
        row = await conn.fetchrow(sql.lock_row, saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        status, holder, expires = row
        live = holder is not None and holder != owner and expires is not None and expires >= now
        if status not in statuses or live:
            return None
        n = 0 if event is None else 1
        seq = await conn.fetchval(sql.take_lease, saga_id, owner, now + lease_seconds, now, n)
        if event is not None:
            await _append_event(conn, sql, saga_id, seq, event)
        return await load(conn, sql, saga_id, history=False)


async def request_cancel(
    conn: asyncpg.Connection,
    sql: Statements,
    saga_id: str,
    event: Event,
    at: float,
    until: str | None,
) -> tuple[SagaRecord | None, str | None]:
    """``(record, None)`` when the cancel is recorded, ``(None, reason)`` when it is refused
    and its ``cancel_refused`` event written. The row lock orders this against the batch
    statement that starts a step: whichever commits second sees the other (READ COMMITTED:
    each statement here reads what committed before it)."""
    async with conn.transaction():
        row = await conn.fetchrow(sql.cancel_facts, saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        status, flagged = _SAGA_STATUS[row[0]], row[1]
        started = [r[0] for r in await conn.fetch(sql.started_steps, saga_id)]
        reason = cancel_refusal(saga_id, status, flagged, started, until)
        if reason is not None:
            seq = await conn.fetchval(sql.count_event, saga_id)
            await _append_event(conn, sql, saga_id, seq, refused_cancel(event, reason))
            return None, reason
        if not flagged:
            seq = await conn.fetchval(sql.flag_cancel, saga_id, at)
            await _append_event(conn, sql, saga_id, seq, event)
        record = await load(conn, sql, saga_id, history=True)
    assert record is not None
    return record, None


async def renew_leases(
    conn: asyncpg.Connection, sql: Statements, owner: str, now: float, lease_seconds: float
) -> list[str]:
    rows = await conn.fetch(sql.renew, owner, now + lease_seconds)
    return sorted(r[0] for r in rows if r[1])


async def list_sagas(
    conn: asyncpg.Connection,
    sql: Statements,
    status: SagaStatus | None,
    name: str | None,
    limit: int,
    offset: int,
) -> tuple[list[SagaRecord], int]:
    wanted = None if status is None else status.value
    # One snapshot for the page and its total.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"SELECT {_COLS} {sql.list_where} ORDER BY i.created_at DESC, i.id DESC "
            "LIMIT $3 OFFSET $4",
            wanted,
            name,
            max(limit, 0),
            max(offset, 0),
        )
        total = await conn.fetchval(f"SELECT count(*) {sql.list_where}", wanted, name)
    return [saga_from_row(r) for r in rows], int(total)


async def list_waiting(
    conn: asyncpg.Connection, sql: Statements, prefix: str, limit: int, offset: int
) -> tuple[list[SagaRecord], int]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"SELECT {_COLS} {sql.waiting_where} ORDER BY i.parked_until, i.id LIMIT $2 OFFSET $3",
            prefix,
            max(limit, 0),
            max(offset, 0),
        )
        total = await conn.fetchval(f"SELECT count(*) {sql.waiting_where}", prefix)
    return [saga_from_row(r) for r in rows], int(total)


async def counts(conn: asyncpg.Connection, sql: Statements) -> dict[SagaStatus, int]:
    return {_SAGA_STATUS[status]: int(n) for status, n in await conn.fetch(sql.counts)}
