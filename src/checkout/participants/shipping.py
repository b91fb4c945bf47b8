"""The shipping participant: books a courier for an order and cancels it on compensation.

It writes only its own tables: a shipment and, in the same transaction, its units in
``shipped_units`` (cancelling takes them out again), so ``shipped_units`` always equals the
items of the created shipments. Inventory's stock is inventory's: the units stay ``reserved``
there (held by the order's reservation) and this count tells how many of them have left.

The operations are synchronous functions over a Core ``Connection`` (the executor owns the
transaction, see :mod:`checkout.dbexec`); :class:`ShippingService` picks the courier and runs
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from checkout.db import ShipmentRow, ShippedRow
from checkout.dbexec import ShopExecutor
from checkout.domain import demo
from checkout.domain.models import Address, OrderLine, Shipment, ShipmentStatus
from checkout.domain.rules import address_problems, assign_courier, merge_lines, validate_address
from checkout.participants._sql import (
    check_claim,
    claim_once,
    dump_lines,
    execute,
    fetch,
    find_by_key,
    insert_ignore,
    load_by_key,
    load_lines,
    table_of,
    undo_once,
    write_lines,
)

shipments = table_of(ShipmentRow)
shipped_units = table_of(ShippedRow)

_SHIP = (
    update(shipped_units)
    .where(shipped_units.c.product_id == bindparam("product"))
    .values(quantity=shipped_units.c.quantity + bindparam("qty"))
)
_UNSHIP = (
    update(shipped_units)
    .where(
        shipped_units.c.product_id == bindparam("product"),
        shipped_units.c.quantity >= bindparam("qty"),
    )
    .values(quantity=shipped_units.c.quantity - bindparam("qty"))
)
_SHIPPED = select(shipped_units.c.product_id, shipped_units.c.quantity).order_by(
    shipped_units.c.product_id
)
_MARK_CANCELLED = (
    update(shipments)
    .where(
        shipments.c.idempotency_key == bindparam("forward"),
        shipments.c.status == ShipmentStatus.CREATED.value,
    )
    .values(status=ShipmentStatus.CANCELLED.value, compensation_key=bindparam("compensation"))
)
_FOR_ORDER = (
    select(shipments)
    .where(shipments.c.order_id == bindparam("order"))
    .order_by(shipments.c.created_at)
)


def _shipment(row: Any) -> Shipment:
    return Shipment(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        courier=row.courier,
        items=load_lines(row.items),
        status=ShipmentStatus(row.status),
        compensation_key=row.compensation_key,
    )


def _first_shipment_of(conn: Connection, line: OrderLine) -> None:
    # A product never shipped has no shipped_units row for the guarded UPDATE to find.
    insert_ignore(
        conn, shipped_units, {"product_id": line.product_id, "quantity": 0}, key="product_id"
    )
    execute(conn, _SHIP, product=line.product_id, qty=line.quantity)


def create_shipment(
    conn: Connection,
    idempotency_key: str,
    order_id: str,
    address: Address | None,
    items: Sequence[OrderLine],
    courier: str | None,
) -> Shipment:
    """Ship the order's (reserved) items to ``address`` with ``courier``.

    Raises :class:`InvalidShippingAddress` for an undeliverable or incomplete address. A repeat
    returns the recorded shipment; a ``void`` tombstone (cancelled before it ran) is returned as
    is. (That the units are reserved is the saga's order of steps: inventory is another
    service, whose tables this one does not read.)
    """
    lines = merge_lines(items)
    recorded = shipped_before(conn, idempotency_key, order_id, address, lines, courier)
    return _made(idempotency_key, order_id, lines, courier) if recorded is None else recorded


def _made(
    idempotency_key: str, order_id: str, lines: list[OrderLine], courier: str | None
) -> Shipment:
    """The shipment a call that created it now makes (what :func:`shipped_before`'s None
    stands for)."""
    return Shipment(
        idempotency_key=idempotency_key,
        order_id=order_id,
        courier=courier,
        items=lines,
        status=ShipmentStatus.CREATED,
    )


def shipped_before(
    conn: Connection,
    idempotency_key: str,
    order_id: str,
    address: Address | None,
    lines: list[OrderLine],
    courier: str | None,
) -> Shipment | None:
    """:func:`create_shipment` of the merged ``lines`` for a write whose caller knows what a
    shipment created now is (the saga step's output): None when this call created it, else
    the shipment recorded under the key (a repeat, or a tombstone). Same errors."""

    def ship(claim: str | None) -> None:
        if address_problems(address):  # InvalidShippingAddress: nothing is recorded
            check_claim(conn, shipments, claim)  # unless a repeat: what it recorded
            validate_address(address)
        write_lines(conn, _SHIP, shipments, claim, lines, partial(_first_shipment_of, conn))

    recorded = claim_once(
        conn,
        shipments,
        {
            "idempotency_key": idempotency_key,
            "order_id": order_id,
            "items": dump_lines(lines),
            "address": address.model_dump() if address is not None else None,
            "courier": courier,
            "status": ShipmentStatus.CREATED.value,
        },
        ship,
    )
    return None if recorded is None else _shipment(recorded)


def cancel_shipment(
    conn: Connection, forward_key: str, idempotency_key: str, order_id: str | None = None
) -> Shipment:
    """Compensate the shipment created under ``forward_key``, exactly once: its units leave
    ``shipped_units`` (the inventory compensation returns them to stock). A shipment that
    never happened gets a ``void`` tombstone so a late create becomes a no-op."""
    cancelled(conn, forward_key, idempotency_key, order_id)
    return _shipment(load_by_key(conn, shipments, forward_key))


def cancelled(
    conn: Connection, forward_key: str, idempotency_key: str, order_id: str | None = None
) -> None:
    """:func:`cancel_shipment` for a caller that needs no answer (a compensation's
    ``ctx.atomic()`` write): the same writes, without reading the row back."""
    undo_once(
        conn,
        shipments,
        forward_key=forward_key,
        idempotency_key=idempotency_key,
        order_id=order_id,
        tombstone_status=ShipmentStatus.VOID.value,
        mark_undone=_MARK_CANCELLED,
        undo_line=_UNSHIP,
        what="unship",
        held="shipped",
    )


def shipped(conn: Connection) -> dict[str, int]:
    """Units shipped per product (products never shipped are absent)."""
    return {row[0]: row[1] for row in fetch(conn, _SHIPPED, {}) if row[1]}


def get_shipment(conn: Connection, idempotency_key: str) -> Shipment | None:
    row = find_by_key(conn, shipments, idempotency_key)
    return None if row is None else _shipment(row)


def shipments_for_order(conn: Connection, order_id: str) -> list[Shipment]:
    return [_shipment(row) for row in conn.execute(_FOR_ORDER, {"order": order_id})]


class ShippingService:
    """Shipments, idempotent on the ship step's key. Couriers are assigned by city, then
    province, then a national default (the demo's table unless others are given)."""

    def __init__(
        self,
        db: ShopExecutor,
        *,
        couriers_by_city: Mapping[tuple[str, str], str] | None = None,
        couriers_by_province: Mapping[str, str] | None = None,
        default_courier: str = demo.DEFAULT_COURIER,
    ) -> None:
        self._db = db
        self._by_city = demo.COURIERS_BY_CITY if couriers_by_city is None else couriers_by_city
        self._by_province = (
            demo.COURIERS_BY_PROVINCE if couriers_by_province is None else couriers_by_province
        )
        self._default = default_courier

    def courier_for(self, address: Address) -> str:
        return assign_courier(address, self._by_city, self._by_province, self._default)

    def _courier(self, address: Address | None) -> str | None:
        """The courier a shipment to ``address`` gets: None where it cannot be shipped to."""
        if address is None or address_problems(address):
            return None
        return self.courier_for(address)

    async def create_shipment(
        self,
        idempotency_key: str,
        order_id: str,
        address: Address | None,
        items: Sequence[OrderLine],
    ) -> Shipment:
        """See :func:`create_shipment`; the courier is chosen here."""
        return await self._db.write(
            create_shipment, idempotency_key, order_id, address, items, self._courier(address)
        )

    def create_in_saga_log(
        self,
        idempotency_key: str,
        order_id: str,
        address: Address | None,
        items: Sequence[OrderLine],
    ) -> tuple[Callable[[Any], Shipment | None], Shipment] | None:
        """:meth:`create_shipment` as a ``ctx.atomic()`` write (:func:`shipped_before`) and
        the shipment it creates, or None where the shop's writes cannot ride the saga log's
        transactions (see :meth:`ShopExecutor.in_saga_log`). For an address it cannot ship to
        the write writes nothing: it raises ``InvalidShippingAddress`` (refusing the transition
        that carries it), or returns what a call with the key recorded before (a tombstone),
        as ``create_shipment`` does: decided in the transaction, as the key's record may be."""
        courier = self._courier(address)
        lines = merge_lines(items)
        write = self._db.in_saga_log(
            shipped_before, idempotency_key, order_id, address, lines, courier
        )
        if write is None:
            return None
        return write, _made(idempotency_key, order_id, lines, courier)

    async def cancel_shipment(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Shipment:
        """See :func:`cancel_shipment`."""
        return await self._db.write(cancel_shipment, forward_key, idempotency_key, order_id)

    def cancel_in_saga_log(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Callable[[Any], None] | None:
        """:func:`cancel_shipment` as a ``ctx.atomic()`` write (:func:`cancelled`), or None
        where the shop's writes cannot ride the saga log's transactions (see
        :meth:`ShopExecutor.in_saga_log`)."""
        return self._db.in_saga_log(cancelled, forward_key, idempotency_key, order_id)

    async def get(self, idempotency_key: str) -> Shipment | None:
        return await self._db.read(get_shipment, idempotency_key)

    async def for_order(self, order_id: str) -> list[Shipment]:
        """Every shipment record of an order (normally one), for status pages."""
        return await self._db.read(shipments_for_order, order_id)
