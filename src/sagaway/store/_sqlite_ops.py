"""The SQLite saga log's statements: plain functions of a connection.

Write operations run on the writer connection inside a group-commit transaction. Each one raises the
port's errors (``SagaNotFound``, ``LeaseLost``, ``InvalidTransition``) *before its first write*:
that invariant is what lets the store run them without a savepoint each (see
``sqlite._write_batch``), so keep it when adding an operation. Read operations run on the
reader thread, each in one read transaction so a saga's row, steps and events come from the
same snapshot.

Kept free of asyncio and threads so that every function here can be read (and tested) as the
SQL it is. Hot paths build parameter tuples by hand: at thousands of sagas per second, Python
overhead per row is what limits the writer. A write's step rows and events go into the saga's
journal (``_sqlite_compact``), appended by the statement that writes the saga's row anyway.
``create`` and ``commit`` hand their outbox messages and the sagas they finish to a
:class:`Pending`: the store writes a whole batch's messages with one ``executemany`` and
compacts its finished sagas together (those whose rows it kept, the finishing commit packs
itself: ``_packs``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import product
from typing import Any, Final

from sagaway.errors import CancelPending, LeaseLost, SagaNotFound, TakeConflict
from sagaway.state import (
    ACTIVE_STATUSES,
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
    cancel_refusal,
    refused_cancel,
)
from sagaway.store._codec import dumps as _dumps
from sagaway.store._sqlite_compact import (
    APPEND_JOURNAL,
    FINISHED,
    Journals,
    compact,
    journal_chunk,
)
from sagaway.store._sqlite_rows import _COLS, _STEP_COLS, load, load_many

_ACTIVE = ",".join(f"'{s.value}'" for s in ACTIVE_STATUSES)
# The WHERE of the status index (sagaway_instances_open, schema v14): a saga over for good is
# not in it, so every query that reads it repeats this term (SQLite uses a partial index only
# then).
NOT_DONE = "status NOT IN ('SUCCEEDED','COMPENSATED')"
# The status index's second key, whether the saga is parked, as a term SQLite seeks on: it
# matches an index on an expression only when the query has that expression, compared to a
# value.
NOT_PARKED = "(waiting_for IS NOT NULL) = 0"
PARKED = "(waiting_for IS NOT NULL) = 1"


def _insert_sql(keyed: bool, deadline: bool) -> str:
    """The INSERT of a new saga, with NULL written in the SQL for an idempotency key or a
    deadline it has not: the driver binds a None parameter through its adapter lookup (two
    attribute lookups, one of them raising), which costs more than the statement's own bind."""
    # Without a key there is nothing the upsert could meet: a plain INSERT (the primary key
    # still raises on a duplicate id, as it does under the upsert).
    upsert = (
        " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        if keyed
        else ""
    )
    # Numbered parameters: created_at and updated_at are the same time, bound once (each of
    # the driver's binds costs ~600 instructions). The columns up to deadline_at, in _COLS's
    # order, each bound or written as NULL:
    bound = (True, True, True, True, True, keyed, True, True, deadline)
    marks: list[str] = []
    number = 0
    for is_bound in bound:
        number += is_bound
        marks.append(f"?{number}" if is_bound else "NULL")
    at, chunk = f"?{number + 1}", f"?{number + 2}"
    return (
        f"INSERT INTO sagaway_instances ({_COLS}, chunks) "
        f"VALUES ({','.join(marks)},0,NULL,{at},{at},{chunk}){upsert}"
    )


INSERT_INSTANCE = _insert_sql(True, True)
_INSERTS: Final = {(a, b): _insert_sql(a, b) for a in (False, True) for b in (False, True)}
UPSERT_STEP = (
    f"INSERT INTO sagaway_steps (saga_id, {_STEP_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (saga_id, name, phase) DO UPDATE SET status = excluded.status, "
    "attempts = excluded.attempts, output = excluded.output, error = excluded.error, "
    "uncertain = excluded.uncertain, started_at = excluded.started_at, "
    "finished_at = excluded.finished_at"
)
INSERT_EVENT = (
    "INSERT INTO sagaway_events (saga_id, at, type, step, phase, attempt, detail) "
    "VALUES (?,?,?,?,?,?,?)"
)
UPSERT_OUTBOX: Final = (
    "INSERT INTO sagaway_outbox (id, saga_id, topic, body, headers, created_at) "
    "VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET saga_id = excluded.saga_id, "
    "topic = excluded.topic, body = excluded.body, headers = excluded.headers, "
    "created_at = excluded.created_at"
)

# An enum member's plain text, by the member (a dict lookup: ``.value`` is a Python property).
# The tables here are Final: compiled, a module-level name that is not is looked up in the
# module's dict at every use (~30 lookups a saga in ``_rows`` alone).
_TEXT: Final[dict[Any, str]] = {
    m: m.value for e in (Phase, StepStatus, EventType, SagaStatus) for m in e
}

# Change.park / Change.unpark, as a third dimension of the UPDATE (0: neither).
_NO_PARK: Final = 0
_PARK: Final = 1
_UNPARK: Final = 2


def _update_sql(
    status: bool,
    release: bool,
    clear: bool,
    fenced: bool,
    guarded: bool,
    park: int = _NO_PARK,
    packs: bool = False,
    error: bool = True,
) -> str:
    """The instance UPDATE for a Change, setting only what it changes: an unchanged status or
    lease then touches no index at all (most commits only record a step's progress).

    ``packs``: the commit finishes the saga and writes its packed value (``_sqlite_compact``'s
    ``Journals.packed``) in place of its journal, if the journal is the one given. ``error``
    False: the new status comes with no error, written as NULL in the SQL (see
    ``_insert_sql``)."""
    sets = [f"status = ?, error = {'?' if error else 'NULL'}"] if status else []
    journal = "packed = ?, chunks = NULL" if packs else APPEND_JOURNAL
    sets.append(f"updated_at = ?, fence = fence + 1, {journal}")
    if park == _PARK:  # parking releases the lease too
        sets.append("waiting_for = ?, parked_until = ?, owner = NULL, lease_expires_at = NULL")
    elif park == _UNPARK:
        sets.append("waiting_for = NULL, parked_until = NULL")
    if release and park != _PARK:
        sets.append("owner = NULL, lease_expires_at = NULL")
    if clear:
        sets.append("cancel_requested = 0")
    # The lease fence is the WHERE clause: a lost lease writes nothing and shows as rowcount 0.
    fence = " AND owner = ?" if fenced else ""
    # Change.unless_cancelled: a recorded cancel fences the write the same way.
    guard = " AND cancel_requested = 0" if guarded else ""
    known = " AND chunks = ?" if packs else ""
    return f"UPDATE sagaway_instances SET {', '.join(sets)} WHERE id = ?{known}{guard}{fence}"


# Indexed by _update_sql's flags (status, release, clear, fenced, guarded) as the bits of an
# int (``_flag_bits``), the first the highest: a list indexed by an int, where a dict keyed by
# the flags' tuple built, hashed and compared a 5-tuple at every commit (~400 instructions).
_FLAGS = tuple((a, b, c, d, e) for a, b, c, d, e in product((False, True), repeat=5))
_UPDATES: Final = [_update_sql(*flags) for flags in _FLAGS]
_PACKING_UPDATES: Final = [_update_sql(*flags, packs=True) for flags in _FLAGS]
# The same UPDATEs for a new status without an error (most of them).
_ERRORLESS_UPDATES: Final = [_update_sql(*flags, error=False) for flags in _FLAGS]
_ERRORLESS_PACKING_UPDATES: Final = [
    _update_sql(*flags, packs=True, error=False) for flags in _FLAGS
]
_PARK_UPDATES: Final = {
    (*flags, park): _update_sql(*flags, park) for flags in _FLAGS for park in (_PARK, _UNPARK)
}


def _flag_bits(status: bool, release: bool, clear: bool, fenced: bool, guarded: bool) -> int:
    """The index of an UPDATE with these flags in ``_UPDATES`` and its kin (``_FLAGS``'s order)."""
    return status << 4 | release << 3 | clear << 2 | fenced << 1 | guarded


def _json(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def event_rows(saga_id: str, events: Iterable[Event]) -> list[tuple[Any, ...]]:
    return [(saga_id, e.at, e.type, e.step, e.phase, e.attempt, e.detail) for e in events]


def _rows(
    steps: list[StepRecord], events: list[Event]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A write's step rows and events as the tables held them, without ``saga_id``, enum
    members as their plain text (what a journal chunk holds: ``journal_chunk``). Callers pass
    the two lists on one by one, not as ``*rows``: compiled, a call with ``*`` is a generic
    Python call where the other is a C one."""
    # ``_TEXT.get`` where it is used, not through a local alias: compiled, that is a direct
    # dict lookup, through an alias a generic call. Lists, as ``Change`` and ``NewSaga`` hold
    # them: compiled, a list is walked by index, a Sequence through a generic iterator.
    return [
        (
            s.name,
            _TEXT.get(s.phase, s.phase),
            _TEXT.get(s.status, s.status),
            s.attempts,
            None if s.output is None else _dumps(s.output),
            s.error,
            1 if s.uncertain else 0,
            s.started_at,
            s.finished_at,
        )
        for s in steps
    ], [
        (e.at, _TEXT.get(e.type, e.type), e.step, _TEXT.get(e.phase, e.phase), e.attempt, e.detail)
        for e in events
    ]


def _chunk(steps: list[StepRecord], events: list[Event]) -> bytes:
    """What a write appends to the saga's journal."""
    rows = _rows(steps, events)
    return journal_chunk(rows[0], rows[1])


def outbox_rows(messages: Iterable[OutboxMessage]) -> list[tuple[Any, ...]]:
    return [
        (m.id, m.saga_id, m.topic, _dumps(m.body), _dumps(m.headers), m.created_at)
        for m in messages
    ]


class Pending:
    """Outbox messages of a batch's operations, written together by :meth:`flush`, and the
    sagas the batch finished, compacted together after them.

    Only for writes that cannot fail once their operation's fenced UPDATE passed (an upsert on
    the primary key, compacting a row that is there): deferring them keeps each operation
    atomic because the batch commits all or nothing, and if a flush fails anyway the store
    replays the batch with a savepoint per operation and no deferral.
    """

    __slots__ = ("cursor", "finished", "journals", "late_events", "late_steps", "outbox", "packed")

    def __init__(
        self, journals: Journals | None = None, cursor: sqlite3.Cursor | None = None
    ) -> None:
        self.journals = journals
        # One cursor for the batch's creates and commits: ``Connection.execute`` makes and
        # frees one a statement (~1.3k instructions of the ~11k a statement costs the driver).
        self.cursor = cursor
        self.outbox: list[tuple[Any, ...]] = []
        # Sagas a commit of the batch finished: compacted once the batch's writes are done,
        # with the finishing commits' rows (saga_id first), which no journal holds.
        self.finished: dict[str, None] = {}
        self.late_steps: list[tuple[Any, ...]] = []
        self.late_events: list[tuple[Any, ...]] = []
        # Sagas a commit of the batch finished and packed itself (see ``_packs``): a later
        # write of one in the batch goes to ``finish`` too, so that compaction folds it in.
        self.packed: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.outbox or self.finished)

    def finish(
        self, saga_id: str, steps: list[tuple[Any, ...]], events: list[tuple[Any, ...]]
    ) -> None:
        self.finished[saga_id] = None
        self.late_steps += [(saga_id, *r) for r in steps]
        self.late_events += [(saga_id, *r) for r in events]

    def flush(self, conn: sqlite3.Connection) -> None:
        if self.outbox:  # in batch order: a message written twice keeps its last version
            conn.executemany(UPSERT_OUTBOX, self.outbox)
            self.outbox = []
        if self.finished:
            compact(conn, list(self.finished), self.late_steps, self.late_events, self.journals)
            self.finished, self.late_steps, self.late_events = {}, [], []


def outbox_delete(conn: sqlite3.Connection, ids: list[str]) -> int:
    cursor = conn.execute(
        "DELETE FROM sagaway_outbox WHERE id IN (SELECT value FROM json_each(?))", (_dumps(ids),)
    )
    return int(cursor.rowcount)


# -- writes (writer connection, inside the batch transaction and the operation's savepoint) --------


def create(
    conn: sqlite3.Connection, new: NewSaga, pending: Pending | None = None
) -> tuple[str, bool]:
    rows = _rows(new.steps, new.events)
    chunk = journal_chunk(rows[0], rows[1])
    key, deadline = new.idempotency_key, new.deadline_at
    # Blobs are bound as bytearray and statuses as plain str: the driver binds those (and
    # int, float, str) as they are, and sends anything else (bytes, an enum member, None)
    # through its adapter lookup first, which costs more than the bind itself.
    # Each shape's tuple written out: ``(*head, ..., *tail)`` builds a list and then a tuple.
    head, name, version = new.id, new.name, new.version
    status, text = _TEXT.get(new.status, new.status), _dumps(new.input)
    owner, lease, at, blob = new.owner, new.lease_expires_at, new.at, bytearray(chunk)
    params: tuple[Any, ...]
    if key is None:
        if deadline is None:
            params = (head, name, version, status, text, owner, lease, at, blob)
        else:
            params = (head, name, version, status, text, owner, lease, deadline, at, blob)
    elif deadline is None:
        params = (head, name, version, status, text, key, owner, lease, at, blob)
    else:
        params = (head, name, version, status, text, key, owner, lease, deadline, at, blob)
    sql = _INSERTS[(key is not None, deadline is not None)]
    on = conn if pending is None or pending.cursor is None else pending.cursor
    cursor = on.execute(sql, params)
    if cursor.rowcount == 0:  # the idempotency key was used: write nothing, return that saga
        row = conn.execute(
            "SELECT id FROM sagaway_instances WHERE idempotency_key = ?", (new.idempotency_key,)
        ).fetchone()
        return str(row[0]), False
    if pending is not None and pending.journals is not None:
        pending.journals.start(new.id, new.at, chunk, rows[0], rows[1])
    return new.id, True


def commit(
    conn: sqlite3.Connection,
    saga_id: str,
    owner: str | None,
    change: Change,
    at: float,
    pending: Pending | None = None,
) -> None:
    # The fenced UPDATE comes first: LeaseLost/SagaNotFound are raised before anything is
    # written, which is what lets the store skip a savepoint for this operation.
    if change.take is not None:  # so is the take's: after it, the lease fence holds
        _take(conn, saga_id, owner, change, at)
    status = change.status
    park = change.park
    rows = _rows(change.steps, change.events)
    # A commit that finishes the saga in a batch (pending) leaves its rows out of the journal:
    # the batch's compaction packs them with the journal (as if appended), so the row never
    # grows by a chunk that is cleared in the same transaction. So does any later commit of
    # that saga in the batch, or its rows would be packed before the finishing commit's.
    late = pending is not None and (
        status in FINISHED or saga_id in pending.finished or saga_id in pending.packed
    )
    chunk = b"" if late else journal_chunk(rows[0], rows[1])
    if park is None and not change.unpark:  # the hot path: no parked-saga columns
        key = _flag_bits(
            status is not None,
            change.release_lease,
            change.clear_cancel,
            owner is not None,
            change.unless_cancelled,
        )
        packs = late and status in FINISHED
        if packs and _packs(conn, pending, saga_id, key, owner, change, at, rows):
            return
        params: tuple[Any, ...]
        blob = bytearray(chunk)  # bound as it is, unlike bytes: see create
        # With the owner written in, not appended (``(*params, owner)`` builds a list first).
        if status is None:
            sql = _UPDATES[key]
            params = (at, blob, saga_id) if owner is None else (at, blob, saga_id, owner)
        elif change.error is None:
            sql, text = _ERRORLESS_UPDATES[key], _TEXT.get(status, status)
            params = (
                (text, at, blob, saga_id) if owner is None else (text, at, blob, saga_id, owner)
            )
        else:
            sql, text, error = _UPDATES[key], _TEXT.get(status, status), change.error
            params = (
                (text, error, at, blob, saga_id)
                if owner is None
                else (text, error, at, blob, saga_id, owner)
            )
    else:
        sql = _PARK_UPDATES[
            (
                status is not None,
                change.release_lease,
                change.clear_cancel,
                owner is not None,
                change.unless_cancelled,
                _UNPARK if park is None else _PARK,
            )
        ]
        params = (at, chunk) if park is None else (at, chunk, park.waiting_for, park.until)
        params = (*params, saga_id) if status is None else (status, change.error, *params, saga_id)
        params = params if owner is None else (*params, owner)
    on = conn if pending is None or pending.cursor is None else pending.cursor
    cursor = on.execute(sql, params)
    if cursor.rowcount == 0:
        _, holder, _ = _exists(conn, saga_id)
        if change.unless_cancelled and (owner is None or holder == owner):
            raise CancelPending(f"saga {saga_id}: a cancel is pending")
        raise LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
    if late:
        assert pending is not None
        pending.finish(saga_id, rows[0], rows[1])
    elif pending is not None and pending.journals is not None:
        pending.journals.add(saga_id, chunk, rows[0], rows[1])
    if change.outbox:
        if pending is not None:
            pending.outbox += outbox_rows(change.outbox)
        else:
            conn.executemany(UPSERT_OUTBOX, outbox_rows(change.outbox))
    if status in FINISHED and pending is None:
        compact(conn, (saga_id,))


def _packs(
    conn: sqlite3.Connection,
    pending: Pending | None,
    saga_id: str,
    key: int,
    owner: str | None,
    change: Change,
    at: float,
    rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]],
) -> bool:
    """Finish a saga this store created by writing its packed value in the commit's own
    UPDATE, fenced on its journal being the one written here: no compaction to read the
    journal back and write the row again. False, having written nothing, when that cannot be
    done (the rows are not known here, a shared text is not numbered yet, the journal or the
    lease differs): the commit then goes the ordinary way, compaction included."""
    assert pending is not None
    if pending.journals is None or saga_id in pending.finished or saga_id in pending.packed:
        return False
    known = pending.journals.packed(saga_id, rows[0], rows[1])
    if known is None:
        return False
    journal, value = known
    status = _TEXT.get(change.status, change.status)
    params: tuple[Any, ...]
    # Blobs as bytearray, the status as plain str, no None: see create.
    packed, fence = bytearray(value), bytearray(journal)
    if change.error is None:
        sql = _ERRORLESS_PACKING_UPDATES[key]
        params = (
            (status, at, packed, saga_id, fence)
            if owner is None
            else (status, at, packed, saga_id, fence, owner)
        )
    else:
        sql, error = _PACKING_UPDATES[key], change.error
        params = (
            (status, error, at, packed, saga_id, fence)
            if owner is None
            else (status, error, at, packed, saga_id, fence, owner)
        )
    on = conn if pending.cursor is None else pending.cursor
    if on.execute(sql, params).rowcount == 0:
        return False
    pending.packed.add(saga_id)
    if change.outbox:
        pending.outbox += outbox_rows(change.outbox)
    return True


def _take(
    conn: sqlite3.Connection, saga_id: str, owner: str | None, change: Change, at: float
) -> None:
    """Lease the saga to ``owner`` if its row is as read (``Change.take``), and no cancel is
    recorded when the change starts a step only without one; else raise, writing nothing."""
    take = change.take
    assert take is not None
    assert owner is not None
    guard = " AND cancel_requested = 0" if change.unless_cancelled else ""
    cursor = conn.execute(
        "UPDATE sagaway_instances SET owner = ?, lease_expires_at = ? WHERE id = ? AND fence = ? "
        f"AND (owner IS NULL OR owner = ? OR lease_expires_at < ?){guard}",
        (owner, take.until, saga_id, take.fence, owner, at),
    )
    if cursor.rowcount == 0:
        _exists(conn, saga_id)
        row = conn.execute(
            "SELECT fence, cancel_requested FROM sagaway_instances WHERE id = ?", (saga_id,)
        ).fetchone()
        if guard and row[0] == take.fence and row[1]:
            raise CancelPending(f"saga {saga_id}: a cancel is pending")
        raise TakeConflict(f"saga {saga_id} was written since it was read")


def _exists(conn: sqlite3.Connection, saga_id: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, owner, lease_expires_at FROM sagaway_instances WHERE id = ?", (saga_id,)
    ).fetchone()
    if row is None:
        raise SagaNotFound(saga_id)
    return tuple(row)


def claim(
    conn: sqlite3.Connection,
    owner: str,
    now: float,
    lease_seconds: float,
    definitions: Sequence[tuple[str, int]],
    limit: int,
    include_own: bool,
) -> list[SagaRecord]:
    if not definitions or limit <= 0:
        return []
    wanted = ",".join("(?,?)" for _ in definitions)
    own = " OR owner = ?" if include_own else ""
    params: list[Any] = [v for pair in definitions for v in pair]
    params.append(now)
    if include_own:
        params.append(owner)
    free = f"AND (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at < ?{own}) "
    # Safe without row locks: the batch holds SQLite's write lock (BEGIN IMMEDIATE) from these
    # SELECTs to the UPDATE, so no other claim, here or in another process, can interleave.
    # Two queries, each on its own index range: sagas not parked (sagaway_instances_open, its
    # status and not-parked prefix), then parked ones whose time has come
    # (sagaway_instances_parked), so the parked sagas that are not due (any number of them)
    # are never read.
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM sagaway_instances INDEXED BY sagaway_instances_open "
            f"WHERE status IN ({_ACTIVE}) "
            f"AND {NOT_PARKED} AND {NOT_DONE} "
            f"AND (name, version) IN (VALUES {wanted}) {free}"
            "ORDER BY created_at, id LIMIT ?",
            [*params, limit],
        )
    ]
    if len(ids) < limit:
        ids += [
            r[0]
            for r in conn.execute(
                # INDEXED BY: left to itself the planner picks the status index, and reads
                # every parked saga again.
                "SELECT id FROM sagaway_instances INDEXED BY sagaway_instances_parked "
                "WHERE waiting_for IS NOT NULL "
                f"AND parked_until <= ? AND status IN ({_ACTIVE}) "
                f"AND (name, version) IN (VALUES {wanted}) {free}"
                "ORDER BY parked_until, id LIMIT ?",
                [now, *params, limit - len(ids)],
            )
        ]
    if not ids:
        return []
    claimed = journal_chunk((), [(now, EventType.SAGA_CLAIMED.value, None, None, None, owner)])
    conn.execute(
        "UPDATE sagaway_instances SET owner = ?, lease_expires_at = ?, updated_at = ?, "
        f"fence = fence + 1, {APPEND_JOURNAL} WHERE id IN (SELECT value FROM json_each(?))",
        (owner, now + lease_seconds, now, claimed, _dumps(ids)),
    )
    return load_many(conn, ids)


def acquire(
    conn: sqlite3.Connection,
    saga_id: str,
    owner: str,
    now: float,
    lease_seconds: float,
    statuses: Sequence[SagaStatus],
    event: Event | None,
) -> SagaRecord | None:
    status, holder, expires = _exists(conn, saga_id)
    live_lease = holder is not None and holder != owner and expires is not None and expires >= now
    if status not in statuses or live_lease:
        return None
    conn.execute(
        "UPDATE sagaway_instances SET owner = ?, lease_expires_at = ?, updated_at = ?, "
        f"fence = fence + 1, {APPEND_JOURNAL} WHERE id = ?",
        (owner, now + lease_seconds, now, _chunk([], [] if event is None else [event]), saga_id),
    )
    return load(conn, saga_id, history=False)


# A leased saga is either not parked (the not-parked range of sagaway_instances_open) or
# parked and claimed because its time had come (parked_until <= the claim's now, in
# sagaway_instances_parked). Parking and finishing release the lease. A parked saga leased
# before its time (an operator's resume, a reply or cancel making it due: ``acquire``) holds
# that lease only until the one write that parks it again or releases it; if that write comes
# after the lease ran out, it fails its owner fence (LeaseLost) as any late write does.
_RENEWED = (
    f"SELECT id, cancel_requested FROM sagaway_instances INDEXED BY sagaway_instances_open "
    f"WHERE {NOT_PARKED} AND {NOT_DONE} AND status IN ({_ACTIVE}) AND owner = ? "
    "UNION ALL "
    "SELECT id, cancel_requested FROM sagaway_instances INDEXED BY sagaway_instances_parked "
    f"WHERE waiting_for IS NOT NULL AND parked_until <= ? AND status IN ({_ACTIVE}) "
    "AND owner = ?"
)


def renew_leases(
    conn: sqlite3.Connection, owner: str, now: float, lease_seconds: float
) -> list[str]:
    # The parked sagas not due (any number, waiting for a signal) are never read here: the
    # first arm seeks past them in sagaway_instances_open, the second reads the due range.
    rows = conn.execute(_RENEWED, (owner, now, owner)).fetchall()
    if rows:
        conn.execute(
            "UPDATE sagaway_instances SET lease_expires_at = ? "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (now + lease_seconds, _dumps([r[0] for r in rows])),
        )
    return [r[0] for r in rows if r[1]]


def request_cancel(
    conn: sqlite3.Connection, saga_id: str, event: Event, at: float, until: str | None
) -> tuple[SagaRecord | None, str | None]:
    """``(record, None)`` when the cancel is recorded, ``(None, reason)`` when it is refused
    (its ``cancel_refused`` event is written): the caller raises, so that this operation, like
    every other one here, never raises after its first write."""
    current = load(conn, saga_id, history=False)
    if current is None:
        raise SagaNotFound(saga_id)
    started = [name for name, phase in current.steps if phase == "forward"]
    status, flagged = current.status, current.cancel_requested
    reason = cancel_refusal(saga_id, status, flagged, started, until)
    if reason is not None:
        # Only the event: a refusal changes nothing a fenced write (Change.take) could miss.
        conn.execute(
            f"UPDATE sagaway_instances SET {APPEND_JOURNAL} WHERE id = ?",
            (_chunk([], [refused_cancel(event, reason)]), saga_id),
        )
        return None, reason
    if not flagged:
        conn.execute(
            "UPDATE sagaway_instances SET cancel_requested = 1, updated_at = ?, "
            f"fence = fence + 1, {APPEND_JOURNAL} WHERE id = ?",
            (at, _chunk([], [event]), saga_id),
        )
    record = load(conn, saga_id, history=True)
    assert record is not None
    return record, None
