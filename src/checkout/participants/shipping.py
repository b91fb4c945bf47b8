"""The shipping participant: books a courier for an order and cancels it on compensation.

Creating a shipment also moves the order's units ``reserved -> shipped`` in the same
transaction (and cancelling moves them back), so the products table tells what is merely held
and what has left the warehouse, while ``stock + reserved + shipped`` stays constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select, update

from checkout.db import ProductRow, ShipmentRow
from checkout.domain import demo
from checkout.domain.models import Address, OrderLine, Shipment, ShipmentStatus
from checkout.domain.rules import address_problems, assign_courier, merge_lines, validate_address
from checkout.participants._sql import (
    Sessions,
    dump_lines,
    execute_update,
    insert_ignore,
    load_by_key,
    load_lines,
)
from checkout.participants.inventory import shortage_error


def _shipment(row: ShipmentRow) -> Shipment:
    return Shipment(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        courier=row.courier,
        items=load_lines(row.items),
        status=ShipmentStatus(row.status),
        compensation_key=row.compensation_key,
    )


class ShippingService:
    """Shipments, idempotent on the ship step's key. Couriers are assigned by city, then
    province, then a national default (the demo's table unless others are given)."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        couriers_by_city: Mapping[tuple[str, str], str] | None = None,
        couriers_by_province: Mapping[str, str] | None = None,
        default_courier: str = demo.DEFAULT_COURIER,
    ) -> None:
        self._sessions = sessions
        self._by_city = demo.COURIERS_BY_CITY if couriers_by_city is None else couriers_by_city
        self._by_province = (
            demo.COURIERS_BY_PROVINCE if couriers_by_province is None else couriers_by_province
        )
        self._default = default_courier

    def courier_for(self, address: Address) -> str:
        return assign_courier(address, self._by_city, self._by_province, self._default)

    async def create_shipment(
        self,
        idempotency_key: str,
        order_id: str,
        address: Address | None,
        items: Sequence[OrderLine],
    ) -> Shipment:
        """Ship the order's (reserved) items to ``address``.

        Raises :class:`InvalidShippingAddress` for an undeliverable or incomplete address, and
        :class:`InsufficientInventory` if the units were not reserved. A repeat returns the
        recorded shipment; a ``void`` tombstone (cancelled before it ran) is returned as is.
        """
        lines = merge_lines(items)
        deliverable = address is not None and not address_problems(address)
        courier = self.courier_for(address) if address is not None and deliverable else None
        async with self._sessions.begin() as session:
            claimed = await insert_ignore(
                session,
                ShipmentRow,
                {
                    "idempotency_key": idempotency_key,
                    "order_id": order_id,
                    "items": dump_lines(lines),
                    "address": address.model_dump() if address is not None else None,
                    "courier": courier,
                    "status": ShipmentStatus.CREATED.value,
                },
            )
            if not claimed:
                return _shipment(await load_by_key(session, ShipmentRow, idempotency_key))
            validate_address(address)  # raises InvalidShippingAddress: the claim rolls back
            for line in lines:
                moved = await execute_update(
                    session,
                    update(ProductRow)
                    .where(ProductRow.id == line.product_id, ProductRow.reserved >= line.quantity)
                    .values(
                        reserved=ProductRow.reserved - line.quantity,
                        shipped=ProductRow.shipped + line.quantity,
                    ),
                )
                if moved != 1:
                    raise await shortage_error(session, line.product_id)
            return Shipment(
                idempotency_key=idempotency_key,
                order_id=order_id,
                courier=courier,
                items=lines,
                status=ShipmentStatus.CREATED,
            )

    async def cancel_shipment(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Shipment:
        """Compensate the shipment created under ``forward_key``, exactly once: units go back
        to reserved (the inventory compensation then returns them to stock). A shipment that
        never happened gets a ``void`` tombstone so a late create becomes a no-op."""
        async with self._sessions.begin() as session:
            tombstoned = await insert_ignore(
                session,
                ShipmentRow,
                {
                    "idempotency_key": forward_key,
                    "order_id": order_id,
                    "items": [],
                    "status": ShipmentStatus.VOID.value,
                    "compensation_key": idempotency_key,
                },
            )
            if not tombstoned:
                cancelled = await execute_update(
                    session,
                    update(ShipmentRow)
                    .where(
                        ShipmentRow.idempotency_key == forward_key,
                        ShipmentRow.status == ShipmentStatus.CREATED.value,
                    )
                    .values(
                        status=ShipmentStatus.CANCELLED.value, compensation_key=idempotency_key
                    ),
                )
                if cancelled:
                    row = await load_by_key(session, ShipmentRow, forward_key)
                    for line in load_lines(row.items):
                        moved = await execute_update(
                            session,
                            update(ProductRow)
                            .where(
                                ProductRow.id == line.product_id,
                                ProductRow.shipped >= line.quantity,
                            )
                            .values(
                                reserved=ProductRow.reserved + line.quantity,
                                shipped=ProductRow.shipped - line.quantity,
                            ),
                        )
                        if moved != 1:
                            raise RuntimeError(
                                f"cannot unship {line.quantity} x {line.product_id}: "
                                "not enough shipped units"
                            )
            return _shipment(await load_by_key(session, ShipmentRow, forward_key))

    async def get(self, idempotency_key: str) -> Shipment | None:
        async with self._sessions.begin() as session:
            row = await session.get(ShipmentRow, idempotency_key)
            return None if row is None else _shipment(row)

    async def for_order(self, order_id: str) -> list[Shipment]:
        """Every shipment record of an order (normally one), for status pages."""
        async with self._sessions.begin() as session:
            rows = await session.scalars(
                select(ShipmentRow)
                .where(ShipmentRow.order_id == order_id)
                .order_by(ShipmentRow.created_at)
            )
            return [_shipment(row) for row in rows]
