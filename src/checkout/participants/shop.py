"""The shop's catalog and accounts: demo data, reads for the API, and order validation.

The operations are synchronous functions over a Core ``Connection`` (see
:mod:`checkout.dbexec`); :class:`ShopService` runs reads with ``read`` (on SQLite they run
alongside the writer) and demo loading and reset with ``write``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, select
from sqlalchemy.engine import Connection

from checkout.db import (
    AccountRow,
    OrderItemRow,
    OrderRow,
    PaymentRow,
    ProductRow,
    ReservationRow,
    ShipmentRow,
    ShippedRow,
)
from checkout.dbexec import ShopExecutor
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
from checkout.participants._sql import (
    address_values,
    fetch,
    fetch_first,
    insert_ignore,
    row_address,
    table_of,
)


@dataclass(frozen=True, slots=True)
class ShopTotals:
    """What the invariants are checked on: both must be equal before and after any sagas."""

    money_cents: int  # payment's: balances + captured (not refunded) payments
    units: dict[str, int]  # inventory's, per product: stock + reserved (shipped or not)


def product_info(row: Any, shipped: int) -> ProductInfo:
    """A product as the shop shows it, from inventory's row and shipping's count: of the units
    inventory holds for orders (``reserved``), ``shipped`` have left, the rest are waiting."""
    return ProductInfo(
        id=row.id,
        name=row.name,
        price_cents=row.price_cents,
        stock=row.stock,
        reserved=row.reserved - shipped,
        shipped=shipped,
    )


def _account(row: Any) -> AccountInfo:
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
    }


def _demo_account_values(account: demo.DemoAccount) -> dict[str, object]:
    return {
        "id": account.id,
        "name": account.name,
        "balance_cents": account.balance_cents,
        **address_values(account.address),
    }


products = table_of(ProductRow)
accounts = table_of(AccountRow)
payments = table_of(PaymentRow)
shipped_units = table_of(ShippedRow)

_PRODUCT = select(products).where(products.c.id == bindparam("product"))
_ACCOUNT = select(accounts).where(accounts.c.id == bindparam("account"))


@cache
def _prices_of(count: int) -> Select[Any]:
    """``SELECT id, price_cents ... WHERE id IN (:p0, ..., :pN)`` for ``count`` ids: one cached
    statement per list length, since an expanding IN parameter is re-rendered on every call
    (about 70 us, more than the query)."""
    return select(products.c.id, products.c.price_cents).where(
        products.c.id.in_([bindparam(f"p{n}") for n in range(count)])
    )


# Each service's share of the demo data, and of a reset: a service writes only its own tables.


def load_demo_products(conn: Connection) -> bool:
    """Inventory's share: the demo products that are missing (True if any was)."""
    inserted = False
    for product in demo.DEMO_PRODUCTS:
        inserted |= insert_ignore(conn, products, _demo_product_values(product), key="id")
    return inserted


def load_demo_accounts(conn: Connection) -> bool:
    """Payment's share: the demo accounts that are missing (True if any was)."""
    inserted = False
    for account in demo.DEMO_ACCOUNTS:
        inserted |= insert_ignore(conn, accounts, _demo_account_values(account), key="id")
    return inserted


def reset_inventory(conn: Connection) -> None:
    conn.execute(delete(table_of(ReservationRow)))
    conn.execute(delete(products))
    load_demo_products(conn)


def reset_payment(conn: Connection) -> None:
    conn.execute(delete(payments))
    conn.execute(delete(accounts))
    load_demo_accounts(conn)


def reset_shipping(conn: Connection) -> None:
    conn.execute(delete(table_of(ShipmentRow)))
    conn.execute(delete(shipped_units))


def load_demo_data(conn: Connection) -> bool:
    """Insert the demo products and accounts that are missing; leave existing rows alone.

    Idempotent, and safe for two processes starting at once (insert-or-ignore). Returns
    True when anything was inserted, i.e. on a fresh database.
    """
    return load_demo_products(conn) | load_demo_accounts(conn)


def reset_orders(conn: Connection) -> None:
    """The gateway's share of a reset: every order."""
    for model in (OrderItemRow, OrderRow):
        conn.execute(delete(table_of(model)))


def reset_demo_data(conn: Connection) -> None:
    """Restore the exact demo starting point: every order and participant record is deleted
    and products/accounts are put back, in one transaction. (The saga log is a separate
    store; the caller resets it too.)"""
    reset_shipping(conn)
    reset_payment(conn)
    reset_inventory(conn)
    reset_orders(conn)


def shipped(conn: Connection) -> dict[str, int]:
    """Shipping's count of units shipped, per product (absent: none)."""
    rows = conn.execute(select(shipped_units.c.product_id, shipped_units.c.quantity))
    return {pid: qty for pid, qty in rows if qty}


def list_catalogue(conn: Connection) -> list[ProductInfo]:
    """Inventory's own view: ``reserved`` is every unit its reservations hold (shipping's
    count is not in its database)."""
    rows = conn.execute(select(products).order_by(products.c.id))
    return [product_info(row, 0) for row in rows]


def list_products(conn: Connection) -> list[ProductInfo]:
    out = shipped(conn)
    rows = conn.execute(select(products).order_by(products.c.id))
    return [product_info(row, out.get(row.id, 0)) for row in rows]


def get_product(conn: Connection, product_id: str) -> ProductInfo | None:
    row = conn.execute(_PRODUCT, {"product": product_id}).first()
    return None if row is None else product_info(row, shipped(conn).get(product_id, 0))


def inventory(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(products.c.id, products.c.stock).order_by(products.c.id))
    return {pid: stock for pid, stock in rows}


def list_accounts(conn: Connection) -> list[AccountInfo]:
    return [_account(row) for row in conn.execute(select(accounts).order_by(accounts.c.id))]


def get_account(conn: Connection, account_id: str) -> AccountInfo | None:
    row = conn.execute(_ACCOUNT, {"account": account_id}).first()
    return None if row is None else _account(row)


def balances(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(accounts.c.id, accounts.c.balance_cents).order_by(accounts.c.id))
    return {aid: cents for aid, cents in rows}


def prices(conn: Connection, product_ids: list[str]) -> dict[str, int]:
    """Catalog price in cents of each known product among ``product_ids``."""
    if not product_ids:
        return {}
    params = {f"p{n}": pid for n, pid in enumerate(product_ids)}
    return {pid: price for pid, price in fetch(conn, _prices_of(len(product_ids)), params)}


def validate_order(conn: Connection, order: OrderInput) -> ValidatedOrder:
    """The ``validate_order`` step: the customer exists, every product exists, the total
    comes from catalog prices, and the shipping address defaults to the account's.

    Raises :class:`UserNotFound` / :class:`ProductNotFound`. The address itself is judged
    by the shipping step, after payment, as the seed service did (user_3's scenario).
    """
    account = fetch_first(conn, _ACCOUNT, {"account": order.customer_id})
    if account is None:
        raise UserNotFound(order.customer_id)
    known = prices(conn, sorted({item.product_id for item in order.items}))
    lines = price_lines(order.items, known)
    return ValidatedOrder(
        order_id=order.order_id,
        customer_id=order.customer_id,
        lines=lines,
        total_cents=order_total(lines),
        shipping_address=order.shipping_address or row_address(account),
    )


def money_total(conn: Connection) -> int:
    """Payment's invariant: balances + captured payments (a saga only moves money between)."""
    balance = conn.execute(select(func.coalesce(func.sum(accounts.c.balance_cents), 0))).scalar()
    captured = conn.execute(
        select(func.coalesce(func.sum(payments.c.amount_cents), 0)).where(
            payments.c.status == PaymentStatus.CAPTURED.value
        )
    ).scalar()
    return int(balance or 0) + int(captured or 0)


def unit_totals(conn: Connection) -> dict[str, int]:
    """Inventory's invariant, per product: stock + reserved (a saga only moves units between)."""
    rows = conn.execute(
        select(products.c.id, products.c.stock + products.c.reserved).order_by(products.c.id)
    )
    return {pid: total for pid, total in rows}


def totals(conn: Connection) -> ShopTotals:
    """Money and units in the system, for invariant checks in tests and the demo CLI."""
    return ShopTotals(money_cents=money_total(conn), units=unit_totals(conn))


class Prevalidated:
    """``validate_order``'s outcome for orders just recorded, worked out by ``record_order``
    from the account and prices it read in the transaction that recorded the order, so that
    the saga's first step, moments later in this process, does not read them again. Taken
    once, and only for the very input it was worked out for; anything else (another process
    runs the saga, a restart, an order this process did not record) reads as before. Bounded:
    an API-only process records orders whose sagas run elsewhere."""

    __slots__ = ("_outcomes", "limit")

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._outcomes: OrderedDict[str, ValidatedOrder] = OrderedDict()

    def remember(self, validated: ValidatedOrder) -> None:
        self._outcomes[validated.order_id] = validated
        if len(self._outcomes) > self.limit:
            self._outcomes.popitem(last=False)

    def take(self, order: OrderInput) -> ValidatedOrder | None:
        validated = self._outcomes.pop(order.order_id, None)
        if (
            validated is None
            or validated.customer_id != order.customer_id
            or validated.shipping_address != order.shipping_address
            or [(line.product_id, line.quantity) for line in validated.lines]
            != [(item.product_id, item.quantity) for item in order.items]
        ):
            return None
        return validated


class ShopService:
    """Catalog and account reads plus demo data management."""

    def __init__(self, db: ShopExecutor, prevalidated: Prevalidated | None = None) -> None:
        self._db = db
        self._prevalidated = prevalidated

    async def load_demo_data(self) -> bool:
        """See :func:`load_demo_data`."""
        return await self._db.write(load_demo_data)

    async def reset_demo_data(self) -> None:
        """See :func:`reset_demo_data`."""
        await self._db.write(reset_demo_data)

    async def list_products(self) -> list[ProductInfo]:
        return await self._db.read(list_products)

    async def get_product(self, product_id: str) -> ProductInfo | None:
        return await self._db.read(get_product, product_id)

    async def inventory(self) -> dict[str, int]:
        """Units available to order, per product (``GET /inventory``)."""
        return await self._db.read(inventory)

    async def list_accounts(self) -> list[AccountInfo]:
        return await self._db.read(list_accounts)

    async def get_account(self, account_id: str) -> AccountInfo | None:
        return await self._db.read(get_account, account_id)

    async def balances(self) -> dict[str, int]:
        """Balance in cents per account (``GET /balances`` converts to decimal at the edge)."""
        return await self._db.read(balances)

    async def prices(self, product_ids: list[str]) -> dict[str, int]:
        """Catalog price in cents of each known product among ``product_ids``."""
        return await self._db.read(prices, product_ids)

    async def validate_order(self, order: OrderInput) -> ValidatedOrder:
        """See :func:`validate_order` (and :class:`Prevalidated`)."""
        if self._prevalidated is not None:
            validated = self._prevalidated.take(order)
            if validated is not None:
                return validated
        return await self._db.read(validate_order, order)

    async def totals(self) -> ShopTotals:
        """Money and units in the system, for invariant checks in tests and the demo CLI."""
        return await self._db.read(totals)
