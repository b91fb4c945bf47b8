"""Orders: what the customer asked for, and where its checkout saga stands.

The order row is the shop's view; the saga log is the source of truth about the checkout. The
API creates the order here, starts the saga, and mirrors the saga's outcome into ``status``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from checkout.db import AccountRow, OrderItemRow, OrderRow, ProductRow, as_utc
from checkout.domain.models import (
    Address,
    OrderInfo,
    OrderInput,
    OrderLine,
    OrderStatus,
    PricedLine,
    UserNotFound,
)
from checkout.domain.rules import order_total, price_lines
from checkout.participants._sql import Sessions, address_values, execute_update, row_address


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex}"


def _order(row: OrderRow) -> OrderInfo:
    return OrderInfo(
        id=row.id,
        customer_id=row.customer_id,
        status=OrderStatus(row.status),
        total_cents=row.total_cents,
        items=[
            PricedLine(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price_cents=item.unit_price_cents,
            )
            for item in row.items
        ],
        shipping_address=row_address(row),
        payment_method=row.payment_method,
        saga_id=row.saga_id,
        idempotency_key=row.idempotency_key,
        error=row.error,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def saga_input(order: OrderInfo) -> OrderInput:
    """The checkout saga's input for ``order``."""
    return OrderInput(
        order_id=order.id,
        customer_id=order.customer_id,
        items=[OrderLine(product_id=i.product_id, quantity=i.quantity) for i in order.items],
        shipping_address=order.shipping_address,
        payment_method=order.payment_method,
    )


class OrderService:
    """Create, read and update orders."""

    def __init__(self, sessions: Sessions, read_sessions: Sessions | None = None) -> None:
        self._sessions = sessions
        self._read = read_sessions or sessions

    async def create_order(
        self,
        customer_id: str,
        items: Sequence[OrderLine],
        *,
        shipping_address: Address | None = None,
        payment_method: str = "card",
        idempotency_key: str | None = None,
        order_id: str | None = None,
        strict: bool = False,
    ) -> tuple[OrderInfo, bool]:
        """Record a ``pending`` order priced from the catalog; returns ``(order, created)``.

        With an ``idempotency_key`` already used, the existing order is returned with
        ``created=False`` and nothing is written (also under a race: the unique constraint
        decides). The shipping address defaults to the customer's.

        ``strict=False`` (default) records orders for unknown customers or products too (an
        unknown product is priced 0), so that the saga fails them with the exact "User not
        found" / "Product not found" message like the seed service. ``strict=True`` raises
        :class:`UserNotFound` / :class:`ProductNotFound` up front instead (for a 422/404).
        """
        if not items:
            raise ValueError("an order needs at least one item")
        if idempotency_key is not None:
            existing = await self.get_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing, False
        try:
            async with self._sessions.begin() as session:
                row = await self._insert(
                    session,
                    order_id or new_order_id(),
                    customer_id,
                    items,
                    shipping_address,
                    payment_method,
                    idempotency_key,
                    strict,
                )
                await session.flush()
                created = _order(row)
        except IntegrityError:
            if idempotency_key is None:
                raise
            existing = await self.get_by_idempotency_key(idempotency_key)
            if existing is None:
                raise
            return existing, False
        return created, True

    @staticmethod
    async def _insert(
        session: AsyncSession,
        order_id: str,
        customer_id: str,
        items: Sequence[OrderLine],
        shipping_address: Address | None,
        payment_method: str,
        idempotency_key: str | None,
        strict: bool,
    ) -> OrderRow:
        account = await session.get(AccountRow, customer_id)
        if account is None and strict:
            raise UserNotFound(customer_id)
        ids = sorted({item.product_id for item in items})
        rows = await session.execute(
            select(ProductRow.id, ProductRow.price_cents).where(ProductRow.id.in_(ids))
        )
        prices = {pid: price for pid, price in rows}
        if not strict:
            prices = {item.product_id: prices.get(item.product_id, 0) for item in items}
        lines = price_lines(items, prices)
        address = shipping_address or (row_address(account) if account is not None else None)
        row = OrderRow(
            id=order_id,
            customer_id=customer_id,
            status=OrderStatus.PENDING.value,
            total_cents=order_total(lines),
            payment_method=payment_method,
            idempotency_key=idempotency_key,
            **address_values(address),
        )
        row.items = [
            OrderItemRow(
                line_no=n,
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price_cents=line.unit_price_cents,
            )
            for n, line in enumerate(lines, start=1)
        ]
        session.add(row)
        return row

    async def get_order(self, order_id: str) -> OrderInfo | None:
        async with self._read() as session:
            row = await session.get(OrderRow, order_id)
            return None if row is None else _order(row)

    async def get_by_idempotency_key(self, idempotency_key: str) -> OrderInfo | None:
        async with self._read() as session:
            row = await session.scalar(
                select(OrderRow).where(OrderRow.idempotency_key == idempotency_key)
            )
            return None if row is None else _order(row)

    async def get_by_saga(self, saga_id: str) -> OrderInfo | None:
        async with self._read() as session:
            row = await session.scalar(select(OrderRow).where(OrderRow.saga_id == saga_id))
            return None if row is None else _order(row)

    async def list_orders(
        self, *, limit: int = 50, offset: int = 0, status: OrderStatus | str | None = None
    ) -> list[OrderInfo]:
        """Newest first."""
        query = select(OrderRow).order_by(OrderRow.created_at.desc(), OrderRow.id.desc())
        if status is not None:
            query = query.where(OrderRow.status == OrderStatus(status).value)
        async with self._read() as session:
            rows = await session.scalars(query.limit(limit).offset(offset))
            return [_order(row) for row in rows]

    async def attach_saga(self, order_id: str, saga_id: str) -> bool:
        """Mark a pending order as checked out by ``saga_id``; False if it already has a saga
        (or does not exist). The check and the write are one statement, so two concurrent
        ``POST /checkout/{id}`` start at most one saga between them."""
        async with self._sessions.begin() as session:
            changed = await execute_update(
                session,
                update(OrderRow)
                .where(OrderRow.id == order_id, OrderRow.saga_id.is_(None))
                .values(saga_id=saga_id, status=OrderStatus.PROCESSING.value),
            )
        return changed == 1

    async def update_status(
        self,
        order_id: str,
        status: OrderStatus | str,
        *,
        error: str | None = None,
        saga_id: str | None = None,
    ) -> OrderInfo | None:
        """Set the order's status (and error, and saga id when given); None if unknown.

        ``error`` is cleared when not given, so a retried saga that succeeds leaves no stale
        message behind.
        """
        values: dict[str, object] = {"status": OrderStatus(status).value, "error": error}
        if saga_id is not None:
            values["saga_id"] = saga_id
        async with self._sessions.begin() as session:
            changed = await execute_update(
                session, update(OrderRow).where(OrderRow.id == order_id).values(**values)
            )
            if not changed:
                return None
            row = await session.scalar(
                select(OrderRow)
                .where(OrderRow.id == order_id)
                .execution_options(populate_existing=True)
            )
            return None if row is None else _order(row)
