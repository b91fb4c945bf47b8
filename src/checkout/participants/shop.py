"""The shop's catalog and accounts: demo data, reads for the API, and order validation.

Reads go through ``read_sessions`` when given (plain BEGIN on SQLite, so they run alongside the
writers); demo loading and reset write through ``sessions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select

from checkout.db import (
    AccountRow,
    OrderItemRow,
    OrderRow,
    PaymentRow,
    ProductRow,
    ReservationRow,
    ShipmentRow,
)
from checkout.domain import demo
from checkout.domain.models import (
    AccountInfo,
    OrderInput,
    PaymentStatus,
    ProductInfo,
    UserNotFound,
    ValidatedOrder,
)
from checkout.domain.rules import order_total, price_lines
from checkout.participants._sql import Sessions, address_values, insert_ignore, row_address


@dataclass(frozen=True, slots=True)
class ShopTotals:
    """What the invariants are checked on: both must be equal before and after any sagas."""

    money_cents: int  # balances + captured (not refunded) payments
    units: dict[str, int]  # per product: stock + reserved + shipped


def _product(row: ProductRow) -> ProductInfo:
    return ProductInfo(
        id=row.id,
        name=row.name,
        price_cents=row.price_cents,
        stock=row.stock,
        reserved=row.reserved,
        shipped=row.shipped,
    )


def _account(row: AccountRow) -> AccountInfo:
    return AccountInfo(
        id=row.id,
        name=row.name,
        balance_cents=row.balance_cents,
        shipping_address=row_address(row),
    )


def _demo_product_values(product: demo.DemoProduct) -> dict[str, object]:
    return {
        "id": product.id,
        "name": product.name,
        "price_cents": product.price_cents,
        "stock": product.stock,
        "reserved": 0,
        "shipped": 0,
    }


def _demo_account_values(account: demo.DemoAccount) -> dict[str, object]:
    return {
        "id": account.id,
        "name": account.name,
        "balance_cents": account.balance_cents,
        **address_values(account.address),
    }


class ShopService:
    """Catalog and account reads plus demo data management."""

    def __init__(self, sessions: Sessions, read_sessions: Sessions | None = None) -> None:
        self._sessions = sessions
        self._read = read_sessions or sessions

    async def load_demo_data(self) -> bool:
        """Insert the demo products and accounts that are missing; leave existing rows alone.

        Idempotent, and safe for two processes starting at once (insert-or-ignore). Returns
        True when anything was inserted, i.e. on a fresh database.
        """
        inserted = False
        async with self._sessions.begin() as session:
            for product in demo.DEMO_PRODUCTS:
                values = _demo_product_values(product)
                inserted |= await insert_ignore(session, ProductRow, values, key="id")
            for account in demo.DEMO_ACCOUNTS:
                values = _demo_account_values(account)
                inserted |= await insert_ignore(session, AccountRow, values, key="id")
        return inserted

    async def reset_demo_data(self) -> None:
        """Restore the exact demo starting point: every order and participant record is
        deleted and products/accounts are put back, in one transaction. (The saga log is a
        separate store; the caller resets it too.)"""
        async with self._sessions.begin() as session:
            for model in (ShipmentRow, PaymentRow, ReservationRow, OrderItemRow, OrderRow):
                await session.execute(delete(model))
            await session.execute(delete(ProductRow))
            await session.execute(delete(AccountRow))
            for product in demo.DEMO_PRODUCTS:
                await insert_ignore(session, ProductRow, _demo_product_values(product), key="id")
            for account in demo.DEMO_ACCOUNTS:
                await insert_ignore(session, AccountRow, _demo_account_values(account), key="id")

    async def list_products(self) -> list[ProductInfo]:
        async with self._read() as session:
            rows = await session.scalars(select(ProductRow).order_by(ProductRow.id))
            return [_product(row) for row in rows]

    async def get_product(self, product_id: str) -> ProductInfo | None:
        async with self._read() as session:
            row = await session.get(ProductRow, product_id)
            return None if row is None else _product(row)

    async def inventory(self) -> dict[str, int]:
        """Units available to order, per product (``GET /inventory``)."""
        async with self._read() as session:
            rows = await session.execute(
                select(ProductRow.id, ProductRow.stock).order_by(ProductRow.id)
            )
            return {pid: stock for pid, stock in rows}

    async def list_accounts(self) -> list[AccountInfo]:
        async with self._read() as session:
            rows = await session.scalars(select(AccountRow).order_by(AccountRow.id))
            return [_account(row) for row in rows]

    async def get_account(self, account_id: str) -> AccountInfo | None:
        async with self._read() as session:
            row = await session.get(AccountRow, account_id)
            return None if row is None else _account(row)

    async def balances(self) -> dict[str, int]:
        """Balance in cents per account (``GET /balances`` converts to decimal at the edge)."""
        async with self._read() as session:
            rows = await session.execute(
                select(AccountRow.id, AccountRow.balance_cents).order_by(AccountRow.id)
            )
            return {aid: cents for aid, cents in rows}

    async def prices(self, product_ids: list[str]) -> dict[str, int]:
        """Catalog price in cents of each known product among ``product_ids``."""
        async with self._read() as session:
            rows = await session.execute(
                select(ProductRow.id, ProductRow.price_cents).where(ProductRow.id.in_(product_ids))
            )
            return {pid: price for pid, price in rows}

    async def validate_order(self, order: OrderInput) -> ValidatedOrder:
        """The ``validate_order`` step: the customer exists, every product exists, the total
        comes from catalog prices, and the shipping address defaults to the account's.

        Raises :class:`UserNotFound` / :class:`ProductNotFound`. The address itself is judged
        by the shipping step, after payment, as the seed service did (user_3's scenario).
        """
        async with self._read() as session:
            account = await session.get(AccountRow, order.customer_id)
            if account is None:
                raise UserNotFound(order.customer_id)
            ids = sorted({item.product_id for item in order.items})
            rows = await session.execute(
                select(ProductRow.id, ProductRow.price_cents).where(ProductRow.id.in_(ids))
            )
            prices = {pid: price for pid, price in rows}
            default_address = row_address(account)
        lines = price_lines(order.items, prices)
        return ValidatedOrder(
            order_id=order.order_id,
            customer_id=order.customer_id,
            lines=lines,
            total_cents=order_total(lines),
            shipping_address=order.shipping_address or default_address,
        )

    async def totals(self) -> ShopTotals:
        """Money and units in the system, for invariant checks in tests and the demo CLI."""
        async with self._read() as session:
            balances = await session.scalar(
                select(func.coalesce(func.sum(AccountRow.balance_cents), 0))
            )
            captured = await session.scalar(
                select(func.coalesce(func.sum(PaymentRow.amount_cents), 0)).where(
                    PaymentRow.status == PaymentStatus.CAPTURED.value
                )
            )
            rows = await session.execute(
                select(
                    ProductRow.id, ProductRow.stock + ProductRow.reserved + ProductRow.shipped
                ).order_by(ProductRow.id)
            )
            units = {pid: total for pid, total in rows}
        return ShopTotals(money_cents=int(balances or 0) + int(captured or 0), units=units)
