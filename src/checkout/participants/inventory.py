"""The inventory participant: reserves stock for an order and releases it on compensation.

Units move between three columns of ``products`` and are never created or destroyed by a saga:
reserve moves ``stock -> reserved``, shipping moves ``reserved -> shipped`` (and back when a
shipment is cancelled), release moves ``reserved -> stock``. So ``stock + reserved + shipped``
is constant whatever mix of orders, retries and crashes ran.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from checkout.db import ProductRow, ReservationRow
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
    Sessions,
    dump_lines,
    execute_update,
    insert_ignore,
    load_by_key,
    load_lines,
)


def _reservation(row: ReservationRow) -> Reservation:
    return Reservation(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        items=load_lines(row.items),
        status=ReservationStatus(row.status),
        compensation_key=row.compensation_key,
    )


async def shortage_error(session: AsyncSession, product_id: str) -> CheckoutError:
    """Why a guarded update on ``product_id`` changed nothing: unknown product or too few."""
    exists = await session.scalar(select(ProductRow.id).where(ProductRow.id == product_id))
    return InsufficientInventory(product_id) if exists else ProductNotFound(product_id)


class InventoryService:
    """Stock reservations, idempotent on the reserve step's key."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    async def reserve(
        self, idempotency_key: str, order_id: str, items: Sequence[OrderLine]
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
        async with self._sessions.begin() as session:
            claimed = await insert_ignore(
                session,
                ReservationRow,
                {
                    "idempotency_key": idempotency_key,
                    "order_id": order_id,
                    "items": dump_lines(lines),
                    "status": ReservationStatus.RESERVED.value,
                },
            )
            if not claimed:
                return _reservation(await load_by_key(session, ReservationRow, idempotency_key))
            for line in lines:  # sorted by product id: a fixed lock order, no deadlocks
                moved = await execute_update(
                    session,
                    update(ProductRow)
                    .where(ProductRow.id == line.product_id, ProductRow.stock >= line.quantity)
                    .values(
                        stock=ProductRow.stock - line.quantity,
                        reserved=ProductRow.reserved + line.quantity,
                    ),
                )
                if moved != 1:
                    raise await shortage_error(session, line.product_id)
            return Reservation(
                idempotency_key=idempotency_key,
                order_id=order_id,
                items=lines,
                status=ReservationStatus.RESERVED,
            )

    async def release(
        self, forward_key: str, idempotency_key: str, order_id: str | None = None
    ) -> Reservation:
        """Compensate the reservation made under ``forward_key``, exactly once.

        * reserved: units go back to stock, status ``released``.
        * already released or cancelled: nothing happens (a repeated compensation).
        * never reserved: a ``cancelled`` tombstone is recorded under ``forward_key``, so a
          reserve call that arrives late (a slow retry of an uncertain step) becomes a no-op.
        ``idempotency_key`` (the compensation's own key) is recorded for the audit trail.
        """
        async with self._sessions.begin() as session:
            tombstoned = await insert_ignore(
                session,
                ReservationRow,
                {
                    "idempotency_key": forward_key,
                    "order_id": order_id,
                    "items": [],
                    "status": ReservationStatus.CANCELLED.value,
                    "compensation_key": idempotency_key,
                },
            )
            if not tombstoned:
                released = await execute_update(
                    session,
                    update(ReservationRow)
                    .where(
                        ReservationRow.idempotency_key == forward_key,
                        ReservationRow.status == ReservationStatus.RESERVED.value,
                    )
                    .values(
                        status=ReservationStatus.RELEASED.value,
                        compensation_key=idempotency_key,
                    ),
                )
                if released:
                    row = await load_by_key(session, ReservationRow, forward_key)
                    for line in load_lines(row.items):
                        await self._unreserve(session, line)
            return _reservation(await load_by_key(session, ReservationRow, forward_key))

    async def get(self, idempotency_key: str) -> Reservation | None:
        async with self._sessions.begin() as session:
            row = await session.get(ReservationRow, idempotency_key)
            return None if row is None else _reservation(row)

    async def for_order(self, order_id: str) -> list[Reservation]:
        """Every reservation record of an order (normally one), for status pages."""
        async with self._sessions.begin() as session:
            rows = await session.scalars(
                select(ReservationRow)
                .where(ReservationRow.order_id == order_id)
                .order_by(ReservationRow.created_at)
            )
            return [_reservation(row) for row in rows]

    @staticmethod
    async def _unreserve(session: AsyncSession, line: OrderLine) -> None:
        moved = await execute_update(
            session,
            update(ProductRow)
            .where(ProductRow.id == line.product_id, ProductRow.reserved >= line.quantity)
            .values(
                stock=ProductRow.stock + line.quantity,
                reserved=ProductRow.reserved - line.quantity,
            ),
        )
        if moved != 1:
            # The units this reservation holds are gone: a bug or a manual edit, never a race.
            # Raising rolls the release back so the saga's compensation retries and, if it
            # keeps failing, the saga ends FAILED where an operator can see it.
            raise RuntimeError(
                f"cannot release {line.quantity} x {line.product_id}: not enough reserved units"
            )
