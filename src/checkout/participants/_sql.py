"""SQL building blocks shared by the participants: claim-by-key inserts and guarded updates.

Every participant follows one pattern, so it is written once here:

1. **Claim the idempotency key** with ``INSERT ... ON CONFLICT DO NOTHING`` in the same
   transaction as the effect. If the row already exists the call is a repeat (or a tombstone
   beat it) and the recorded row is returned; nothing is applied twice. On PostgreSQL a second
   concurrent call with the same key blocks on the first one's uncommitted row and then sees
   it, so even simultaneous repeats apply once. On SQLite, BEGIN IMMEDIATE serialises writers.
2. **Apply the effect with conditional updates** (``... WHERE stock >= :q``): the check and the
   write are one statement, so concurrent orders cannot oversell or overdraw on either backend.
3. **A business failure raises**, which rolls the claim back too: nothing is recorded, and a
   retry with the same key evaluates afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import CursorResult, Table, Update, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from checkout.db import Base
from checkout.domain.models import Address, OrderLine


class Sessions(Protocol):
    """What participants need from a session factory: :class:`checkout.db.SessionFactory`
    (which queues SQLite writers) or a plain ``async_sessionmaker``."""

    def __call__(self) -> AsyncSession: ...

    def begin(self) -> AbstractAsyncContextManager[AsyncSession]: ...


RowT = TypeVar("RowT", bound=Base)


async def insert_ignore(
    session: AsyncSession,
    model: type[Base],
    values: dict[str, Any],
    key: str = "idempotency_key",
) -> bool:
    """Insert a row unless one with the same ``key`` exists; True when this call inserted it."""
    dialect = session.get_bind().dialect.name
    table = cast(Table, model.__table__)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    else:  # pragma: no cover - only the two supported backends reach here
        raise NotImplementedError(f"insert_ignore does not support {dialect}")
    # Column defaults (timestamps) are Python-side: fill them as the ORM would.
    for column in table.columns:
        if column.name not in values and column.default is not None:
            arg = column.default.arg  # type: ignore[attr-defined]
            values[column.name] = arg(None) if callable(arg) else arg
    result = await session.execute(stmt.values(**values))
    return cast(CursorResult[Any], result).rowcount == 1


async def execute_update(session: AsyncSession, stmt: Update) -> int:
    """Run a guarded UPDATE and return how many rows it changed (0: the guard said no)."""
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


async def load_by_key(session: AsyncSession, model: type[RowT], key: str) -> RowT:
    """The row recorded under ``key``, re-read from the database (not the identity map) since
    the caller may just have changed it with a Core UPDATE."""
    row: RowT | None = await session.scalar(
        select(model)  # type: ignore[arg-type]
        .where(model.idempotency_key == key)  # type: ignore[attr-defined]
        .execution_options(populate_existing=True)
    )
    if row is None:  # pragma: no cover - callers only load keys they just saw or claimed
        raise LookupError(f"no {model.__tablename__} row with key {key!r}")
    return row


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
