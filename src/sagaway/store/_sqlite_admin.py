"""The operator's side of the SQLite saga log: listings, counts, retention and pins.

Listing reads run on the store's reader connection, each in one read transaction of its own (or
as a single statement). Retention: finished sagas are found through
``sagaway_instances_finished`` (a partial index a saga enters when it finishes, unpinned);
``prune`` and ``set_pinned`` run in the writer's batch transaction like every write. Pruning
deletes a saga's instance row (its packed history with it, see ``_sqlite_compact``) and any
step rows, events and outbox messages it still has.

Loading one saga (``load``, its steps and history, packed or not) is in ``_sqlite_ops``: the
writes load sagas too. ``peek`` (a parked saga read before the write that takes it) is here: one
statement, so its own snapshot without a transaction of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from sagaway.state import PRUNABLE_STATUSES, OutboxMessage, SagaRecord, SagaStatus
from sagaway.store._codec import SAGA_STATUS as _SAGA_STATUS
from sagaway.store._codec import dumps as _dumps
from sagaway.store._codec import message_from_row
from sagaway.store._sqlite_compact import journal_rows, table_then_journal_steps
from sagaway.store._sqlite_ops import _ACTIVE, NOT_DONE, NOT_PARKED, PARKED, _exists
from sagaway.store._sqlite_rows import (
    _OUTBOX_COLS,
    _SELECT_COLS,
    _STEP_COLS,
    _saga,
    _step,
    load,
    read_load,
)

# After the row's columns: packed, fence, journal, chunks.
_PEEK_STEP = len(_SELECT_COLS.split(",")) + 4
_PEEK = (
    f"SELECT {', '.join('i.' + c.strip() for c in _SELECT_COLS.split(','))}, i.packed, i.fence, "
    f"i.journal, i.chunks, {', '.join('s.' + c.strip() for c in _STEP_COLS.split(','))} "
    "FROM sagaway_instances i LEFT JOIN sagaway_steps s ON s.saga_id = i.id WHERE i.id = ?"
)


def peek(conn: sqlite3.Connection, saga_id: str) -> SagaRecord | None:
    """The saga and its steps (no history) with its fence, in one statement: one snapshot, so
    no BEGIN and COMMIT of its own (``read_load`` adds them and a second statement). Step rows
    in the table (logs from before the journal) come first, the journal's after them, as
    ``read_rows`` orders them; a saga with a packed history (finished, or FAILED and retried)
    is read by ``read_load``."""
    rows = conn.execute(_PEEK, (saga_id,)).fetchall()
    if not rows:
        return None
    first = rows[0]
    if first[_PEEK_STEP - 4] is not None:
        return read_load(conn, saga_id, False)
    record = _saga(first)
    record.fence = first[_PEEK_STEP - 3]
    # A saga without step rows in the table has one row, the LEFT JOIN's NULLs.
    steps = [row[_PEEK_STEP:] for row in rows] if first[_PEEK_STEP] is not None else []
    journal, chunks = first[_PEEK_STEP - 2], first[_PEEK_STEP - 1]
    if journal or chunks:
        steps = table_then_journal_steps(steps, journal_rows(journal, chunks)[0])
    for step_row in steps:
        step = _step(step_row)
        record.steps[(step.name, step.phase)] = step
    return record


def read_list(
    conn: sqlite3.Connection, status: SagaStatus | None, name: str | None, limit: int, offset: int
) -> tuple[list[SagaRecord], int]:
    clauses: list[str] = []
    params: list[Any] = []
    split = False
    if status is not None:
        clauses.append("status = ?")
        params.append(status.value)
        # Then sagaway_instances_open has them, newest first in each of its two ranges of
        # the status (not parked, parked): the page merges the two.
        split = status.value not in ("SUCCEEDED", "COMPENSATED")
        if split:
            clauses.append(NOT_DONE)
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    order_by = "created_at DESC, id DESC"
    if not split:
        return _page(conn, where, order_by, params, limit, offset)
    # A SELECT of each range, merged by SQLite as they come (UNION ALL with an ORDER BY):
    # a page reads its own rows and the ones it skips, not every saga of the status.
    ranges = " UNION ALL ".join(
        f"SELECT {_SELECT_COLS} FROM sagaway_instances{where} AND {term}"
        for term in (NOT_PARKED, PARKED)
    )
    return _page(conn, where, order_by, params, limit, offset, ranges, 2)


def read_waiting(
    conn: sqlite3.Connection, prefix: str, limit: int, offset: int
) -> tuple[list[SagaRecord], int]:
    # substr, not LIKE: a prefix is text, "%" and "_" in it match themselves.
    where = " WHERE waiting_for IS NOT NULL AND substr(waiting_for, 1, ?) = ?"
    return _page(conn, where, "parked_until, id", (len(prefix), prefix), limit, offset)


def _page(
    conn: sqlite3.Connection,
    where: str,
    order_by: str,
    params: Sequence[object],
    limit: int,
    offset: int,
    select: str | None = None,
    copies: int = 1,
) -> tuple[list[SagaRecord], int]:
    """One page of instances and the count of all that match, read in one snapshot.
    ``select`` (default: the instances ``where`` admits) is the page's query before its ORDER
    BY, binding ``params`` ``copies`` times over."""
    if select is None:
        select = f"SELECT {_SELECT_COLS} FROM sagaway_instances{where}"
    conn.execute("BEGIN")
    try:
        items = [
            _saga(r)
            for r in conn.execute(
                f"{select} ORDER BY {order_by} LIMIT ? OFFSET ?",
                (*tuple(params) * copies, max(limit, 0), max(offset, 0)),
            )
        ]
        total = conn.execute(f"SELECT count(*) FROM sagaway_instances{where}", params).fetchone()
        return items, int(total[0])
    finally:
        conn.execute("COMMIT")


def read_outbox(
    conn: sqlite3.Connection, limit: int, older_than: float | None
) -> list[OutboxMessage]:
    if older_than is None:
        rows = conn.execute(
            f"SELECT {_OUTBOX_COLS} FROM sagaway_outbox ORDER BY created_at, id LIMIT ?",
            (max(limit, 0),),
        )
    else:
        rows = conn.execute(
            f"SELECT {_OUTBOX_COLS} FROM sagaway_outbox WHERE created_at < ? "
            "ORDER BY created_at, id LIMIT ?",
            (older_than, max(limit, 0)),
        )
    return [message_from_row(r) for r in rows]


def read_outbox_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM sagaway_outbox").fetchone()[0])


_STRANDED = "(owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at < ? OR owner = ?)"
# Sagas not parked: in flight or queued, what claims read each second anyway.
_STRANDED_NOT_PARKED = (
    "SELECT name, version, count(*) FROM sagaway_instances INDEXED BY sagaway_instances_open "
    f"WHERE {NOT_PARKED} AND {NOT_DONE} AND status IN ({_ACTIVE}) AND {_STRANDED} "
    "GROUP BY name, version"
)
_PARKED = (
    "sagaway_instances INDEXED BY sagaway_instances_parked_definition WHERE waiting_for IS NOT NULL"
)
_FIRST_PARKED = f"SELECT name, version FROM {_PARKED} ORDER BY name, version LIMIT 1"
# Two seeks, not "(name, version) > (?, ?)": SQLite seeks that on name alone and walks every
# saga of the name to pass the version.
_NEXT_VERSION = (
    f"SELECT name, version FROM {_PARKED} AND name = ? AND version > ? ORDER BY version LIMIT 1"
)
_NEXT_NAME = f"SELECT name, version FROM {_PARKED} AND name > ? ORDER BY name, version LIMIT 1"
_COUNT_PARKED = (
    f"SELECT count(*) FROM {_PARKED} AND name = ? AND version = ? "
    f"AND status IN ({_ACTIVE}) AND {_STRANDED}"
)


def read_stranded(
    conn: sqlite3.Connection, now: float, owner: str, known: Collection[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The sagas not parked, grouped; then the parked ones' definitions, one index seek
    each, and a count of those not in ``known`` only: no parked saga of a known definition
    is read, however many wait."""
    conn.execute("BEGIN")
    try:
        found: dict[tuple[str, int], int] = {
            (name, version): n
            for name, version, n in conn.execute(_STRANDED_NOT_PARKED, (now, owner))
            if (name, version) not in known
        }
        row = conn.execute(_FIRST_PARKED).fetchone()
        while row is not None:
            key = (row[0], row[1])
            if key not in known:
                count = conn.execute(_COUNT_PARKED, (*key, now, owner)).fetchone()[0]
                if count:
                    found[key] = found.get(key, 0) + count
            row = conn.execute(_NEXT_VERSION, key).fetchone()
            if row is None:
                row = conn.execute(_NEXT_NAME, key[:1]).fetchone()
    finally:
        conn.execute("COMMIT")
    return found


def read_ids(conn: sqlite3.Connection, prefix: str, limit: int) -> list[str]:
    # A range on the primary key: every id starting with ``prefix`` sorts between the prefix
    # and the prefix followed by the highest code point (TEXT compares as UTF-8 bytes).
    rows = conn.execute(
        "SELECT id FROM sagaway_instances WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (prefix, prefix + "\U0010ffff", limit),
    )
    return [saga_id for (saga_id,) in rows]


def read_counts(conn: sqlite3.Connection) -> dict[SagaStatus, int]:
    rows = conn.execute("SELECT status, count(*) FROM sagaway_instances GROUP BY status")
    return {_SAGA_STATUS[status]: int(n) for status, n in rows}


# -- retention -------------------------------------------------------------------------------

# The same terms as sagaway_instances_finished's WHERE, so the planner can use that index.
_PRUNABLE = (
    f"status IN ({','.join(repr(s.value) for s in PRUNABLE_STATUSES)}) AND pinned = 0 "
    "AND updated_at < ?"
)


def read_prunable(conn: sqlite3.Connection, finished_before: float, limit: int) -> list[str]:
    rows = conn.execute(
        f"SELECT id FROM sagaway_instances INDEXED BY sagaway_instances_finished "
        f"WHERE {_PRUNABLE} ORDER BY updated_at, id LIMIT ?",
        (finished_before, limit),
    )
    return [saga_id for (saga_id,) in rows]


# By primary key: the unary + keeps the planner off the status indexes, which it picks once
# the file has statistics (an ANALYZE or PRAGMA optimize by the application sharing it), and
# then walks every finished saga in the log for each batch.
PRUNE_INSTANCES = (
    "DELETE FROM sagaway_instances WHERE id IN (SELECT value FROM json_each(?)) "
    f"AND +status IN ({','.join(repr(s.value) for s in PRUNABLE_STATUSES)}) AND +pinned = 0 "
    "AND +updated_at < ? RETURNING id"
)


def prune(conn: sqlite3.Connection, ids: list[str], finished_before: float) -> list[str]:
    """Delete the sagas of ``ids`` still prunable, with their rows (inside the batch)."""
    param = _dumps(ids)
    gone = [saga_id for (saga_id,) in conn.execute(PRUNE_INSTANCES, (param, finished_before))]
    if gone:
        param = _dumps(gone)
        conn.execute(
            "DELETE FROM sagaway_steps WHERE saga_id IN (SELECT value FROM json_each(?))",
            (param,),
        )
        conn.execute(
            "DELETE FROM sagaway_events WHERE saga_id IN (SELECT value FROM json_each(?))",
            (param,),
        )
        # No index on saga_id: the outbox holds only unpublished messages, a few rows.
        conn.execute(
            "DELETE FROM sagaway_outbox WHERE saga_id IN (SELECT value FROM json_each(?))",
            (param,),
        )
    return gone


def set_pinned(conn: sqlite3.Connection, saga_id: str, pinned: bool) -> SagaRecord:
    _exists(conn, saga_id)  # SagaNotFound before any write
    conn.execute("UPDATE sagaway_instances SET pinned = ? WHERE id = ?", (int(pinned), saga_id))
    record = load(conn, saga_id, history=False)
    assert record is not None
    return record
