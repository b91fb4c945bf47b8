"""Compaction on SQLite: a finished saga's step rows and events folded into its instance row.

While a saga runs, each transition adds step rows and events (about 3 and 8 rows for a
three-step saga, each with its own index entry: over 1.4 KB of the ~1.9 KB a finished saga
took). When a commit finishes a saga (SUCCEEDED, COMPENSATED or FAILED), :func:`compact`
runs in the same transaction: it reads those rows, writes them as one packed value
(``store._packed``) in the row's ``packed`` column and deletes them. In the same transaction,
so there is no state in which a saga is half compacted, and nothing to recover after a crash.

Readers put a saga back together from both forms: the packed value first, then any rows
written after it (an operator's retry of a FAILED saga, a refused cancel's event); a step row
replaces the packed step of the same (name, phase). A saga finishing again is compacted again,
folding both into one value. Retention deletes the instance row and its rows, packed or not.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sagaway.state import SagaStatus
from sagaway.store._codec import dumps
from sagaway.store._packed import merge_steps, pack, shareable, unpack

# What a commit compacts on: the statuses in which no engine runs the saga any more.
FINISHED = frozenset({SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED})

STEP_COLS = "name, phase, status, attempts, output, error, uncertain, started_at, finished_at"
EVENT_COLS = "at, type, step, phase, attempt, detail"


def compact(
    conn: sqlite3.Connection,
    ids: Sequence[str],
    unwritten_steps: Sequence[Sequence[Any]] = (),
    unwritten_events: Sequence[Sequence[Any]] = (),
) -> None:
    """Fold the step rows and events of the sagas ``ids`` into their ``packed`` values (inside
    the caller's transaction; ids of sagas that are gone are ignored).

    ``unwritten_steps`` and ``unwritten_events`` are rows of these sagas (``saga_id`` first)
    that the transaction has not written yet, in the order it would write them: they are
    packed as if written (a step row upserted over the stored one, events after the stored
    ones) without ever being inserted."""
    param = (dumps(list(ids)),)
    sagas = {
        saga_id: (created_at, packed)
        for saga_id, created_at, packed in conn.execute(
            "SELECT id, created_at, packed FROM sagaway_instances "
            "WHERE id IN (SELECT value FROM json_each(?))",
            param,
        )
    }
    steps: dict[str, list[Sequence[Any]]] = {saga_id: [] for saga_id in sagas}
    events: dict[str, list[Sequence[Any]]] = {saga_id: [] for saga_id in sagas}
    for row in conn.execute(
        f"SELECT saga_id, {STEP_COLS} FROM sagaway_steps "
        "WHERE saga_id IN (SELECT value FROM json_each(?))",
        param,
    ):
        steps[row[0]].append(row[1:])
    # By saga, then id: the index on saga_id ends with the rowid, which is history order.
    for row in conn.execute(
        f"SELECT saga_id, {EVENT_COLS} FROM sagaway_events "
        "WHERE saga_id IN (SELECT value FROM json_each(?)) ORDER BY saga_id, id",
        param,
    ):
        events[row[0]].append(row[1:])
    if unwritten_steps:
        late_steps: dict[str, list[Sequence[Any]]] = {}
        for row in unwritten_steps:
            if row[0] in steps:
                late_steps.setdefault(row[0], []).append(row[1:])
        for saga_id, rows in late_steps.items():
            # The order the table keeps them in: its primary key (name, phase).
            steps[saga_id] = sorted(merge_steps(steps[saga_id], rows), key=_step_key)
    for row in unwritten_events:
        if row[0] in events:
            events[row[0]].append(row[1:])
    texts: set[str] = set()
    for saga_id, (created_at, packed) in sagas.items():
        if packed is not None:
            old_steps, old_events = unpack(created_at, packed, _resolver(conn))
            steps[saga_id] = merge_steps(old_steps, steps[saga_id])
            events[saga_id] = [*old_events, *events[saga_id]]
        texts |= shareable(steps[saga_id], events[saga_id])
    shared = _intern(conn, texts)
    values = [
        (pack(created_at, steps[saga_id], events[saga_id], shared), saga_id)
        for saga_id, (created_at, _) in sagas.items()
    ]
    conn.executemany("UPDATE sagaway_instances SET packed = ? WHERE id = ?", values)
    conn.execute(
        "DELETE FROM sagaway_steps WHERE saga_id IN (SELECT value FROM json_each(?))", param
    )
    conn.execute(
        "DELETE FROM sagaway_events WHERE saga_id IN (SELECT value FROM json_each(?))", param
    )


def _step_key(row: Sequence[Any]) -> tuple[str, str]:
    return (row[0], row[1])


def _intern(conn: sqlite3.Connection, texts: set[str]) -> dict[str, int]:
    """The numbers of ``texts`` in sagaway_texts, adding those not there yet. A number is
    never reused or changed (rows are only added), so packed values can refer to it."""
    if not texts:
        return {}
    param = (dumps(sorted(texts)),)
    conn.execute(
        "INSERT INTO sagaway_texts (text) SELECT value FROM json_each(?) WHERE true "
        "ON CONFLICT (text) DO NOTHING",
        param,
    )
    return dict(
        conn.execute(
            "SELECT text, id FROM sagaway_texts WHERE text IN (SELECT value FROM json_each(?))",
            param,
        ).fetchall()
    )


def _resolver(conn: sqlite3.Connection) -> Callable[[list[int]], dict[int, str]]:
    def resolve(numbers: list[int]) -> dict[int, str]:
        return dict(
            conn.execute(
                "SELECT id, text FROM sagaway_texts WHERE id IN (SELECT value FROM json_each(?))",
                (dumps(numbers),),
            ).fetchall()
        )

    return resolve


def read_rows(
    conn: sqlite3.Connection,
    saga_id: str,
    created_at: float,
    packed: bytes | None,
    history: bool,
) -> tuple[list[Sequence[Any]], list[Sequence[Any]]]:
    """A saga's step rows and (with ``history``) its events in order, packed or not."""
    steps: list[Sequence[Any]] = conn.execute(
        f"SELECT {STEP_COLS} FROM sagaway_steps WHERE saga_id = ?", (saga_id,)
    ).fetchall()
    events: list[Sequence[Any]] = []
    if history:
        events = conn.execute(
            f"SELECT {EVENT_COLS} FROM sagaway_events WHERE saga_id = ? ORDER BY id", (saga_id,)
        ).fetchall()
    if packed is None:
        return steps, events
    packed_steps, packed_events = unpack(created_at, packed, _resolver(conn))
    return merge_steps(packed_steps, steps), [*packed_events, *events] if history else []
