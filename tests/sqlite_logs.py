"""SQLite saga logs as an older schema version left them, for the migration tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sagaway.store._sqlite_schema import MIGRATIONS

INSERT_INSTANCE = (
    "INSERT INTO sagaway_instances (id, name, version, status, input, owner, "
    "lease_expires_at, waiting_for, parked_until, created_at, updated_at) "
    "VALUES (?, 's', 1, ?, '{}', ?, ?, ?, ?, ?, ?)"
)
"""A saga row of any version since 3: ``(id, status, owner, lease_expires_at, waiting_for,
parked_until, created_at, updated_at)``."""


def log_at_version(db: Path, version: int) -> sqlite3.Connection:
    """A log file as schema ``version`` left it, open for the test to write old rows into."""
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)")
    for applied in range(1, version + 1):
        for statement in MIGRATIONS[applied - 1]:
            old.execute(statement)
        old.execute("INSERT INTO sagaway_schema (version) VALUES (?)", (applied,))
    return old


def sagas_of_every_kind(t0: float) -> list[tuple[Any, ...]]:
    """Rows for ``INSERT_INSTANCE``: one finished, one in flight (owner ``e1``, its lease to
    ``t0 + 60``), one parked (until ``t0 + 12``), one queued."""
    return [
        ("done", "SUCCEEDED", None, None, None, None, t0, t0 + 1),
        ("running", "RUNNING", "e1", t0 + 60, None, None, t0 + 1, t0 + 1),
        ("parked", "RUNNING", None, None, "signal:go", t0 + 12, t0 + 2, t0 + 2),
        ("queued", "PENDING", None, None, None, None, t0 + 3, t0 + 3),
    ]
