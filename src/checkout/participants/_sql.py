"""SQL building blocks shared by the participants: claim-by-key inserts and guarded updates.

Every shop operation is a synchronous function over a SQLAlchemy Core ``Connection`` (see
:mod:`checkout.dbexec`: the executor owns the transaction), and every participant follows one
pattern, so it is written once here:

1. **Claim the idempotency key** with ``INSERT ... ON CONFLICT DO NOTHING`` in the same
   transaction as the effect. If the row already exists the call is a repeat (or a tombstone
   beat it) and the recorded row is returned; nothing is applied twice. On PostgreSQL a second
   concurrent call with the same key blocks on the first one's uncommitted row and then sees
   it, so even simultaneous repeats apply once. On SQLite writers are serialised (one writer
   thread, or BEGIN IMMEDIATE).
2. **Apply the effect with conditional updates** (``... WHERE stock >= :q``): the check and the
   write are one statement, so concurrent orders cannot oversell or overdraw on either backend.
3. **A business failure raises**, which rolls the claim back too: nothing is recorded, and a
   retry with the same key evaluates afresh.

Statements are built once, at import, with named bind parameters: SQLAlchemy then compiles each
one once per dialect and caches it, and a call costs only its execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import Executable, Insert, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from checkout.db import Base
from checkout.domain.models import Address, OrderLine


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


@cache
def _insert_ignore(dialect: str, table: Table, key: str) -> Insert:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    raise NotImplementedError(f"insert_ignore does not support {dialect}")  # pragma: no cover


def insert_ignore(
    conn: Connection, table: Table, values: dict[str, Any], key: str = "idempotency_key"
) -> bool:
    """Insert a row unless one with the same ``key`` exists; True when this call inserted it.
    Python-side column defaults (timestamps) are filled in by SQLAlchemy."""
    result = conn.execute(_insert_ignore(conn.dialect.name, table, key), values)
    return result.rowcount == 1


def execute(conn: Connection, stmt: Executable, **params: Any) -> int:
    """Run a guarded UPDATE (or DELETE) and return how many rows it changed (0: the guard
    said no)."""
    return conn.execute(stmt, params).rowcount


@cache
def _by_key(table: Table) -> Executable:
    return select(table).where(table.c.idempotency_key == bindparam("key"))


def load_by_key(conn: Connection, table: Table, key: str) -> Row[Any]:
    """The row recorded under ``key``, as the database has it now."""
    row = conn.execute(_by_key(table), {"key": key}).first()
    if row is None:  # pragma: no cover - callers only load keys they just saw or claimed
        raise LookupError(f"no {table.name} row with key {key!r}")
    return row


def find_by_key(conn: Connection, table: Table, key: str) -> Row[Any] | None:
    return conn.execute(_by_key(table), {"key": key}).first()


def dump_lines(lines: Sequence[OrderLine]) -> list[dict[str, Any]]:
    return [line.model_dump() for line in lines]


def load_lines(data: Sequence[dict[str, Any]] | None) -> list[OrderLine]:
    return [OrderLine.model_validate(item) for item in data or ()]


ADDRESS_FIELDS = ("street", "city", "province", "postal_code", "country")


def address_values(address: Address | None) -> dict[str, str | None]:
    """An address as the ``ship_*`` columns of accounts and orders."""
    return {
        f"ship_{name}": (getattr(address, name) if address is not None else None)
        for name in ADDRESS_FIELDS
    }


def row_address(row: Any) -> Address | None:
    """The ``ship_*`` columns of a row as an Address; None when they are all empty."""
    values = {name: getattr(row, f"ship_{name}") for name in ADDRESS_FIELDS}
    if all(value is None for value in values.values()):
        return None
    return Address(**values)
