"""The inventory participant: reserves stock for an order and releases it on compensation.

Units move between two columns of ``products`` and are never created or destroyed by a saga:
reserve moves ``stock -> reserved``, release moves ``reserved -> stock``. So ``stock + reserved``
is constant whatever mix of orders, retries and crashes ran. A completed order's units stay
``reserved`` here: the shipping service counts those that have left in its own table.

The operations are synchronous functions over a Core ``Connection`` (the executor owns the
transaction, see :mod:`checkout.dbexec`); :class:`InventoryService` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from checkout.db import ProductRow, ReservationRow
from checkout.dbexec import ShopExecutor
from checkout.domain.models import (
    CheckoutError,
    InsufficientInventory,
    OrderLine,
    ProductNotFound,
    Reservation,
    ReservationStatus,
)
from checkout.domain.rules import merge_lines
from checkout.participants._sql import (
    claim_once,
    dump_lines,
    fetch_first,
    find_by_key,
    load_by_key,
    load_lines,
    table_of,
    undo_once,
    write_lines,
)

products = table_of(ProductRow)
reservations = table_of(ReservationRow)

_RESERVE = (
    update(products)
    .where(products.c.id == bindparam("product"), products.c.stock >= bindparam("qty"))
    .values(
        stock=products.c.stock - bindparam("qty"), reserved=products.c.reserved + bindparam("qty")
    )
)
_UNRESERVE = (
    update(products)
    .where(products.c.id == bindparam("product"), products.c.reserved >= bindparam("qty"))
    .values(
        stock=products.c.stock + bindparam("qty"), reserved=products.c.reserved - bindparam("qty")
    )
)
_PRODUCT_EXISTS = select(products.c.id).where(products.c.id == bindparam("product"))
_MARK_RELEASED = (
    update(reservations)
    .where(
        reservations.c.idempotency_key == bindparam("forward"),
        reservations.c.status == ReservationStatus.RESERVED.value,
    )
    .values(status=ReservationStatus.RELEASED.value, compensation_key=bindparam("compensation"))
)
_FOR_ORDER = (
    select(reservations)
    .where(reservations.c.order_id == bindparam("order"))
    .order_by(reservations.c.created_at)
)


def _reservation(row: Any) -> Reservation:
    return Reservation(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        items=load_lines(row.items),
        status=ReservationStatus(row.status),
        compensation_key=row.compensation_key,
    )


def shortage_error(conn: Connection, product_id: str) -> CheckoutError:
    """Why a guarded update on ``product_id`` changed nothing: unknown product or too few."""
    exists = fetch_first(conn, _PRODUCT_EXISTS, {"product": product_id})
    return InsufficientInventory(product_id) if exists else ProductNotFound(product_id)


def _short_of(conn: Connection, line: OrderLine) -> None:
    raise shortage_error(conn, line.product_id)


def reserve(
    conn: Connection, idempotency_key: str, order_id: str, items: Sequence[OrderLine]
) -> Reservation:
    """Reserve every line of the order, all or nothing.

    Raises :class:`ProductNotFound` or :class:`InsufficientInventory` (nothing reserved,
    nothing recorded). A repeat with the same key returns the recorded reservation; if the
    key holds a tombstone (released before it ran), that tombstone is returned and no stock
    moves: the caller must treat a status other than ``reserved`` as "did not happen".
    """
    lines = merge_lines(items)
    if not lines:
        raise ValueError("a reservation needs at least one item")
    recorded = reserved_before(conn, idempotency_key, order_id, lines)
    return _made(idempotency_key, order_id, lines) if recorded is None else recorded


def _made(idempotency_key: str, order_id: str, lines: list[OrderLine]) -> Reservation:
    """The reservation a call that reserved now makes (what :func:`reserved_before`'s None
    stands for)."""
    return Reservation(
        idempotency_key=idempotency_key,
        order_id=order_id,
        items=lines,
        status=ReservationStatus.RESERVED,
    )


def reserved_before(
    conn: Connection, idempotency_key: str, order_id: str, lines: list[OrderLine]
) -> Reservation | None:
    """:func:`reserve` of the merged, non-empty ``lines`` for a write whose caller knows what
    a reservation made now is (the saga step's output, built from the same arguments): None
    when this call reserved, else the reservation recorded under the key (a repeat, or a
    tombstone). Same errors."""

    def take_units(claim: str | None) -> None:
        write_lines(conn, _RESERVE, reservations, claim, lines, partial(_short_of, conn))

    recorded = claim_once(
        conn,
        reservations,
        {
            "idempotency_key": idempotency_key,
            "order_id": order_id,
            "items": dump_lines(lines),
            "status": ReservationStatus.RESERVED.value,
        },
        take_units,
    )
    return None if recorded is None else _reservation(recorded)


def release(
    conn: Connection, forward_key: str, idempotency_key: str, order_id: str | None = None
) -> Reservation:
    """Compensate the reservation made under ``forward_key``, exactly once.

    * reserved: units go back to stock, status ``released``.
    * already released or cancelled: nothing happens (a repeated compensation).
    * never reserved: a ``cancelled`` tombstone is recorded under ``forward_key``, so a
      reserve call that arrives late (a slow retry of an uncertain step) becomes a no-op.
    ``idempotency_key`` (the compensation's own key) is recorded for the audit trail.
    """
    released(conn, forward_key, idempotency_key, order_id)
    return _reservation(load_by_key(conn, reservations, forward_key))


def released(
    conn: Connection, forward_key: str, idempotency_key: str, order_id: str | None = None
) -> None:
    """:func:`release` for a caller that needs no answer (a compensation's ``ctx.atomic()``
    write): the same writes, without reading the row back and building its model."""
    undo_once(
        conn,
        reservations,
        forward_key=forward_key,
        idempotency_key=idempotency_key,
        order_id=order_id,
        tombstone_status=ReservationStatus.CANCELLED.value,
        mark_undone=_MARK_RELEASED,
        undo_line=_UNRESERVE,
        what="release",
        held="reserved",
    )


def get_reservation(conn: Connection, idempotency_key: str) -> Reservation | None:
    row = find_by_key(conn, reservations, idempotency_key)
    return None if row is None else _reservation(row)


def reservations_for_order(conn: Connection, order_id: str) -> list[Reservation]:
    return [_reservation(row) for row in conn.execute(_FOR_ORDER, {"order": order_id})]


class InventoryService:
    """Stock reservations, idempotent on the reserve step's key."""

    def __init__(self, db: ShopExecutor) -> None:
        self._db = db

    async def reserve(
        self, idempotency_key: str, order_id: str, items: Sequence[OrderLine]
    ) -> Reservation:
        """See :func:`reserve`."""
        return await self._db.write(reserve, idempotency_key, order_id, items)

    def reserve_in_saga_log(
        self, idempotency_key: str, order_id: str, items: Sequence[OrderLine]
    ) -> tuple[Callable[[Any], Reservation | None], Reservation] | None:
        """:func:`reserve` as a ``ctx.atomic()`` write (:func:`reserved_before`) and the
        reservation it makes, or None where the shop's writes cannot ride the saga log's
        transactions (see :meth:`ShopExecutor.in_saga_log`), or for no items (``reserve``'s
        own error then)."""
        lines = merge_lines(items)
        if not lines:
            return None
        write = self._db.in_saga_log(reserved_before, idempotency_key, order_id, lines)
        if write is None:
            return None
        return write, _made(idempotency_key, order_id, lines)

    async def release(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Reservation:
        """See :func:`release`."""
        return await self._db.write(release, forward_key, idempotency_key, order_id)

    def release_in_saga_log(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Callable[[Any], None] | None:
        """:func:`release` as a ``ctx.atomic()`` write (:func:`released`), or None where the
        shop's writes cannot ride the saga log's transactions (see
        :meth:`ShopExecutor.in_saga_log`)."""
        return self._db.in_saga_log(released, forward_key, idempotency_key, order_id)

    async def get(self, idempotency_key: str) -> Reservation | None:
        return await self._db.read(get_reservation, idempotency_key)

    async def for_order(self, order_id: str) -> list[Reservation]:
        """Every reservation record of an order (normally one), for status pages."""
        return await self._db.read(reservations_for_order, order_id)
