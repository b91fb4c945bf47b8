"""Reading the SQLite saga log: rows back into records (``SagaRecord``, ``StepRecord``,
``Event``, ``OutboxMessage``), a saga's steps and history from whichever forms hold them (the
packed value, the tables of logs before v11, the journal: ``_sqlite_compact.read_rows``).

Plain functions of a connection, like ``_sqlite_ops``: the writer reads through them inside
its batch (a claim, an acquire, a cancel), the reader thread in a read transaction of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sagaway.state import Event, SagaRecord, StepRecord
from sagaway.store._codec import EVENT_TYPE as _EVENT_TYPE
from sagaway.store._codec import PHASE as _PHASE
from sagaway.store._codec import SAGA_STATUS as _SAGA_STATUS
from sagaway.store._codec import STEP_STATUS as _STEP_STATUS
from sagaway.store._codec import dumps as _dumps
from sagaway.store._codec import loads as _loads
from sagaway.store._sqlite_compact import read_rows

_COLS = (
    "id, name, version, status, input, idempotency_key, owner, lease_expires_at, deadline_at, "
    "cancel_requested, error, created_at, updated_at"
)
# Read back with every saga; written only by commits that park or unpark it.
_SELECT_COLS = f"{_COLS}, waiting_for, parked_until, pinned"
_STEP_COLS = "name, phase, status, attempts, output, error, uncertain, started_at, finished_at"
_OUTBOX_COLS = "id, saga_id, topic, body, headers, created_at"


def _unjson(text: str | None) -> Any:
    return None if text is None else _loads(text)


def _saga(row: Sequence[Any]) -> SagaRecord:
    return SagaRecord(
        id=row[0],
        name=row[1],
        version=row[2],
        status=_SAGA_STATUS[row[3]],
        input=_unjson(row[4]),
        idempotency_key=row[5],
        owner=row[6],
        lease_expires_at=row[7],
        deadline_at=row[8],
        cancel_requested=bool(row[9]),
        error=row[10],
        created_at=row[11],
        updated_at=row[12],
        waiting_for=row[13],
        parked_until=row[14],
        pinned=bool(row[15]),
    )


def _step(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        name=row[0],
        phase=_PHASE[row[1]],
        status=_STEP_STATUS[row[2]],
        attempts=row[3],
        output=_unjson(row[4]),
        error=row[5],
        uncertain=bool(row[6]),
        started_at=row[7],
        finished_at=row[8],
    )


def _event(row: Sequence[Any]) -> Event:
    return Event(
        at=row[0],
        type=_EVENT_TYPE[row[1]],
        step=row[2],
        phase=None if row[3] is None else _PHASE[row[3]],
        attempt=row[4],
        detail=row[5],
    )


# -- reads (any connection; the caller provides the transaction) --------------------------------


def load(conn: sqlite3.Connection, saga_id: str, history: bool) -> SagaRecord | None:
    row = conn.execute(
        f"SELECT {_SELECT_COLS}, packed, fence, journal, chunks FROM sagaway_instances "
        "WHERE id = ?",
        (saga_id,),
    ).fetchone()
    if row is None:
        return None
    record = _saga(row)
    record.fence = row[17]
    steps, events = read_rows(conn, saga_id, record.created_at, row[16], row[18], row[19], history)
    for step_row in steps:
        step = _step(step_row)
        record.steps[(step.name, step.phase)] = step
    if history:
        record.history = [_event(r) for r in events]
    return record


def load_many(conn: sqlite3.Connection, ids: list[str]) -> list[SagaRecord]:
    """Several sagas with their steps (no history), in the order of ``ids``."""
    if not ids:
        return []
    param = (_dumps(ids),)
    records: dict[str, SagaRecord] = {}
    rebuilt: list[tuple[SagaRecord, bytes | None, str | None, bytes | None]] = []
    for r in conn.execute(
        f"SELECT {_SELECT_COLS}, packed, journal, chunks FROM sagaway_instances "
        "WHERE id IN (SELECT value FROM json_each(?))",
        param,
    ):
        records[r[0]] = record = _saga(r)
        if r[16] is not None or r[17] or r[18]:  # packed: a FAILED saga an operator retries
            rebuilt.append((record, r[16], r[17], r[18]))
    for r in conn.execute(
        f"SELECT saga_id, {_STEP_COLS} FROM sagaway_steps "
        "WHERE saga_id IN (SELECT value FROM json_each(?))",
        param,
    ):
        step = _step(r[1:])
        records[r[0]].steps[(step.name, step.phase)] = step
    for record, packed, journal, chunks in rebuilt:
        rows = read_rows(conn, record.id, record.created_at, packed, journal, chunks, False)[0]
        record.steps = {(step.name, step.phase): step for step in map(_step, rows)}
    return [records[i] for i in ids]


def read_load(conn: sqlite3.Connection, saga_id: str, history: bool) -> SagaRecord | None:
    conn.execute("BEGIN")
    try:
        return load(conn, saga_id, history)
    finally:
        conn.execute("COMMIT")
