"""Orders: what the customer asked for, and where its checkout saga stands.

The order row is the shop's view; the saga log is the source of truth about the checkout. The
API creates the order here, starts the saga, and mirrors the saga's outcome into ``status``.

The operations are synchronous functions over a Core ``Connection`` (the executor owns the
transaction, see :mod:`checkout.dbexec`); :class:`OrderService` runs them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Select, bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from checkout.db import AccountRow, OrderItemRow, OrderRow, as_utc, utcnow
from checkout.dbexec import ShopExecutor
from checkout.domain.models import (
    AccountInfo,
    Address,
    OrderInfo,
    OrderInput,
    OrderLine,
    OrderStatus,
    PricedLine,
    UserNotFound,
    ValidatedOrder,
)
from checkout.domain.rules import order_total, price_lines
from checkout.participants._sql import (
    address_values,
    execute,
    fetch_first,
    row_address,
    run,
    table_of,
)
from checkout.participants.shop import Prevalidated, prices
from sagaway.state import new_saga_id


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What pricing an order needs from the payment and inventory services."""

    prices: Mapping[str, int]
    account: AccountInfo | None


class CatalogueSource(Protocol):
    async def catalogue(self, customer_id: str, product_ids: list[str]) -> Catalogue: ...


orders = table_of(OrderRow)
order_items = table_of(OrderItemRow)
accounts = table_of(AccountRow)

_ACCOUNT = select(accounts).where(accounts.c.id == bindparam("account"))
_ORDER = select(orders).where(orders.c.id == bindparam("order"))
_BY_KEY = select(orders).where(orders.c.idempotency_key == bindparam("key"))
_BY_SAGA = select(orders).where(orders.c.saga_id == bindparam("saga"))
_ITEMS = (
    select(order_items)
    .where(order_items.c.order_id.in_(bindparam("orders", expanding=True)))
    .order_by(order_items.c.order_id, order_items.c.line_no)
)
_INSERT_ORDER = insert(orders)
_INSERT_ITEMS = insert(order_items)
_ATTACH = (
    update(orders)
    .where(orders.c.id == bindparam("order"), orders.c.saga_id.is_(None))
    .values(
        saga_id=bindparam("saga"), status=OrderStatus.PROCESSING.value, updated_at=bindparam("now")
    )
)
# The tracker's write: only for the order's own saga, and only when something changes.
_MIRROR = (
    update(orders)
    .where(
        orders.c.id == bindparam("order"),
        or_(orders.c.saga_id.is_(None), orders.c.saga_id == bindparam("saga")),
        or_(
            orders.c.status != bindparam("new_status"),
            orders.c.error.is_distinct_from(bindparam("new_error")),
            orders.c.saga_id.is_(None),
        ),
    )
    .values(
        status=bindparam("new_status"),
        error=bindparam("new_error"),
        saga_id=bindparam("saga"),
        updated_at=bindparam("now"),
    )
)

# ``_MIRROR`` for a row its saga is attached to already (every order checked out with its saga
# in one transaction, and every attached one): ``saga_id`` is not in the SET, so SQLite leaves
# the row's ``ix_orders_saga_id`` entry alone instead of deleting and inserting it again (an
# UPDATE rewrites each index with a column in its SET, changed or not).
_MIRROR_OWN = (
    update(orders)
    .where(
        orders.c.id == bindparam("order"),
        orders.c.saga_id == bindparam("saga"),
        or_(
            orders.c.status != bindparam("new_status"),
            orders.c.error.is_distinct_from(bindparam("new_error")),
        ),
    )
    .values(
        status=bindparam("new_status"), error=bindparam("new_error"), updated_at=bindparam("now")
    )
)


def new_order_id() -> str:
    """``ord_`` and 32 hex digits, as a uuid4 gave: the millisecond, then 80 random bits.

    Time-ordered so that the B-trees keyed by it (orders' primary key, order_items', the
    reservations', payments' and shipments' order_id indexes, the checkout saga's idempotency
    key ``checkout:<order id>``) take each new entry at their right edge, where the batch's
    other new entries are: with uuid4 every order landed on its own leaf of each, ~8 more
    pages written to the WAL a group commit (43.6 -> 35.3 frames of 8 KB, WAL bytes an order
    108 -> 90 KB; README "Session 16, lane wal"). 80 random bits keep an id unguessable.
    """
    return "ord_" + new_saga_id(time.time())


def _order(row: Any, items: Sequence[Any]) -> OrderInfo:
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
            for item in items
        ],
        shipping_address=row_address(row),
        payment_method=row.payment_method,
        saga_id=row.saga_id,
        idempotency_key=row.idempotency_key,
        request_fingerprint=row.request_fingerprint,
        error=row.error,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def _with_items(conn: Connection, rows: Sequence[Any]) -> list[OrderInfo]:
    if not rows:
        return []
    items: defaultdict[str, list[Any]] = defaultdict(list)
    for item in conn.execute(_ITEMS, {"orders": [row.id for row in rows]}):
        items[item.order_id].append(item)
    return [_order(row, items[row.id]) for row in rows]


def _one(conn: Connection, stmt: Any, **params: Any) -> OrderInfo | None:
    # Precompiled on sqlite3 (see _sql.fetch): an order looked up by its key is on every keyed
    # POST /orders, twice (the replay check, then the claim inside the write).
    row = fetch_first(conn, stmt, params)
    return None if row is None else _with_items(conn, [row])[0]


def saga_input(order: OrderInfo, lines: list[OrderLine] | None = None) -> OrderInput:
    """The checkout saga's input for ``order``; ``lines``: its items' ``OrderLine``s, when the
    caller holds them already (see :func:`_recorded_input`)."""
    if lines is None:
        lines = [OrderLine(product_id=i.product_id, quantity=i.quantity) for i in order.items]
    return OrderInput(
        order_id=order.id,
        customer_id=order.customer_id,
        items=lines,
        shipping_address=order.shipping_address,
        payment_method=order.payment_method,
    )


def _recorded_input(order: OrderInfo, items: Sequence[OrderLine]) -> OrderInput:
    """``saga_input(order)`` for an order :func:`record_order` just recorded from ``items``:
    its priced lines are ``items`` one for one (product and quantity), so the request's own
    ``OrderLine`` objects (immutable) are the input's lines, not a copy of each (~1 us an
    order). Any other kind of line (a subclass) gets the copies."""
    for item in items:
        if type(item) is not OrderLine:
            return saga_input(order)
    return saga_input(order, list(items))


def record_order(
    conn: Connection,
    order_id: str,
    customer_id: str,
    items: Sequence[OrderLine],
    shipping_address: Address | None,
    payment_method: str,
    idempotency_key: str | None,
    strict: bool,
    checkout: bool = False,
    chosen_id: bool = False,
    request_fingerprint: str | None = None,
    catalogue: Catalogue | None = None,
    saga_id: str | None = None,
) -> tuple[OrderInfo, bool, ValidatedOrder | None]:
    """Record an order priced from the catalog, ``processing`` when it is being checked out
    (its saga starts next, or is ``saga_id``, created in this very transaction: see
    :class:`NewCheckout`) else a ``pending`` draft; ``(order, created, validated)``. An order
    already recorded under ``idempotency_key``, or under ``order_id`` when the client chose it
    (``chosen_id``), is returned as is (``created=False``).

    ``catalogue``: the prices and the customer's account as the services answered them (the
    gateway of separate services); None: read from the payment and inventory tables in this
    same database (the embedded shop).

    ``validated``: what the saga's ``validate_order`` will find for an order recorded here for
    checkout from this database's own tables (the account and prices it read): the
    :class:`ValidatedOrder`, or None when that step must look for itself (an unknown customer
    or product, whose failure it words; another catalogue; a draft; a repeat)."""
    if idempotency_key is not None:
        existing = _one(conn, _BY_KEY, key=idempotency_key)
        if existing is not None:
            return existing, False, None
    if chosen_id:
        existing = _one(conn, _ORDER, order=order_id)
        if existing is not None:
            return existing, False, None
    validated_by_catalogue = False
    if catalogue is None:
        row = fetch_first(conn, _ACCOUNT, {"account": customer_id})
        found, default_address = row is not None, (row_address(row) if row is not None else None)
        known = prices(conn, sorted({item.product_id for item in items}))
        validated_by_catalogue = found and all(item.product_id in known for item in items)
    else:
        known = dict(catalogue.prices)
        found = catalogue.account is not None
        default_address = catalogue.account.shipping_address if catalogue.account else None
    if not found and strict:
        raise UserNotFound(customer_id)
    if not strict:
        known = {item.product_id: known.get(item.product_id, 0) for item in items}
    lines = price_lines(items, known)
    address = shipping_address or default_address
    now = utcnow()
    total = order_total(lines)
    status = OrderStatus.PROCESSING if checkout else OrderStatus.PENDING
    run(
        conn,
        _INSERT_ORDER,
        {
            "id": order_id,
            "customer_id": customer_id,
            "status": status.value,
            "total_cents": total,
            "payment_method": payment_method,
            "idempotency_key": idempotency_key,
            "request_fingerprint": request_fingerprint,
            "saga_id": saga_id,
            "created_at": now,
            "updated_at": now,
            **address_values(address),
        },
    )
    run(
        conn,
        _INSERT_ITEMS,
        [
            {
                "order_id": order_id,
                "line_no": n,
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price_cents": line.unit_price_cents,
            }
            for n, line in enumerate(lines, start=1)
        ],
    )
    order = OrderInfo(
        id=order_id,
        customer_id=customer_id,
        status=status,
        total_cents=total,
        items=lines,
        shipping_address=address,
        payment_method=payment_method,
        saga_id=saga_id,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        error=None,
        created_at=now,
        updated_at=now,
    )
    validated = None
    if checkout and validated_by_catalogue:  # validate_order's own checks and pricing, passed
        validated = ValidatedOrder(
            order_id=order_id,
            customer_id=customer_id,
            lines=lines,
            total_cents=total,
            shipping_address=address,
        )
    return order, True, validated


def get_order(conn: Connection, order_id: str) -> OrderInfo | None:
    return _one(conn, _ORDER, order=order_id)


def get_by_idempotency_key(conn: Connection, idempotency_key: str) -> OrderInfo | None:
    return _one(conn, _BY_KEY, key=idempotency_key)


def get_by_saga(conn: Connection, saga_id: str) -> OrderInfo | None:
    return _one(conn, _BY_SAGA, saga=saga_id)


def list_orders(
    conn: Connection, limit: int, offset: int, status: OrderStatus | None
) -> list[OrderInfo]:
    """Newest first."""
    query = select(orders).order_by(orders.c.created_at.desc(), orders.c.id.desc())
    if status is not None:
        query = query.where(orders.c.status == status.value)
    rows = conn.execute(query.limit(limit).offset(offset)).all()
    return _with_items(conn, rows)


def attach_saga(conn: Connection, order_id: str, saga_id: str) -> bool:
    """Mark a draft order as checked out by ``saga_id`` (``processing``); False if it has a
    saga already (or does not exist). The check and the write are one statement, so two
    concurrent checkouts attach at most one saga between them."""
    return execute(conn, _ATTACH, order=order_id, saga=saga_id, now=utcnow()) == 1


def mirror_saga(
    conn: Connection, order_id: str, saga_id: str, status: OrderStatus, error: str | None
) -> bool:
    """Set the order's status (and error, and saga id) from its saga ``saga_id``; True if the
    row changed. Never touches an order that belongs to another saga.

    On SQLite the row is first updated as one attached to ``saga_id`` (``_MIRROR_OWN``), which
    changes it exactly when ``_MIRROR`` would and to the same values; only where that changed
    nothing (a row without its saga yet, or nothing to change) does ``_MIRROR`` run."""
    params = {
        "order": order_id,
        "saga": saga_id,
        "new_status": status.value,
        "new_error": error,
        "now": utcnow(),
    }
    if conn.dialect.name == "sqlite" and run(conn, _MIRROR_OWN, params) == 1:
        return True
    return run(conn, _MIRROR, params) == 1


def update_status(
    conn: Connection,
    order_id: str,
    status: OrderStatus,
    error: str | None,
    saga_id: str | None,
) -> OrderInfo | None:
    values: dict[str, object] = {"status": status.value, "error": error, "updated_at": utcnow()}
    if saga_id is not None:
        values["saga_id"] = saga_id
    if not execute(conn, update(orders).where(orders.c.id == order_id).values(**values)):
        return None
    return get_order(conn, order_id)


def _processing(
    with_saga: bool, after: str, limit: int, updated_before: datetime | None
) -> Select[Any]:
    """``(id, saga_id)`` of orders still ``processing``, with a saga attached or without, by
    id after ``after``."""
    saga = orders.c.saga_id.is_not(None) if with_saga else orders.c.saga_id.is_(None)
    query: Select[Any] = (
        select(orders.c.id, orders.c.saga_id)
        .where(orders.c.status == OrderStatus.PROCESSING.value, saga, orders.c.id > after)
        .order_by(orders.c.id)
        .limit(limit)
    )
    if updated_before is not None:
        query = query.where(orders.c.updated_at < updated_before)
    return query


def processing_orders(
    conn: Connection, after: str, limit: int, updated_before: datetime | None
) -> list[tuple[str, str]]:
    """``(order id, saga id)`` of orders still ``processing`` with a saga, by id after
    ``after`` (for paging), optionally only those last updated before ``updated_before``."""
    query = _processing(True, after, limit, updated_before)
    # Rows typed Any: SQLAlchemy's types call a Row a tuple, which it is not, and the compiled
    # build checks what it is told.
    rows: Iterable[Any] = conn.execute(query)
    return [(row[0], row[1]) for row in rows if row[1]]


def unstarted_orders(
    conn: Connection, after: str, limit: int, updated_before: datetime | None
) -> list[str]:
    """Ids of orders checked out (``processing``) whose saga was never attached, by id after
    ``after``: what a crash between recording an order and starting its saga leaves."""
    query = _processing(False, after, limit, updated_before)
    rows: Iterable[Any] = conn.execute(query)  # (a Row is no tuple: see above)
    return [row[0] for row in rows]


class AlreadyRecorded(Exception):
    """The order a :class:`NewCheckout` was to record is there already (its idempotency key
    or client-chosen id): nothing was written."""

    def __init__(self, order: OrderInfo) -> None:
        super().__init__(order.id)
        self.order = order


class NewCheckout:
    """An order to record ``processing`` in the transaction that creates its checkout saga:
    ``Engine.start_with``'s ``record`` (see ``OrderTracker.record_and_start``). Called with
    the saga log's connection and the saga's id, it records the order with that saga
    attached and returns the saga's input; an order already recorded under the key or id
    raises :class:`AlreadyRecorded` before anything is written. Where it was created, what it
    recorded is ``order`` (and ``validated``, see :func:`record_order`). Called again if the
    batch is replayed: each call replaces what the last one recorded."""

    def __init__(
        self,
        db: ShopExecutor,
        order_id: str,
        customer_id: str,
        items: Sequence[OrderLine],
        shipping_address: Address | None,
        payment_method: str,
        idempotency_key: str | None,
        chosen_id: bool,
        request_fingerprint: str | None,
        catalogue: Catalogue | None,
    ) -> None:
        self._db, self.order_id, self.customer_id, self.items = db, order_id, customer_id, items
        self.shipping_address, self.payment_method = shipping_address, payment_method
        self.idempotency_key, self.chosen_id = idempotency_key, chosen_id
        self.request_fingerprint, self.catalogue = request_fingerprint, catalogue
        self.order: OrderInfo | None = None
        self.validated: ValidatedOrder | None = None

    def __call__(self, connection: Any, saga_id: str) -> OrderInput:
        write = self._db.in_saga_log(self._record, saga_id)
        assert write is not None  # (OrderService.new_checkout made one only where it is)
        order, created, validated = write(connection)
        if not created:
            raise AlreadyRecorded(order)
        self.order, self.validated = order, validated
        return _recorded_input(order, self.items)

    def _record(
        self, conn: Connection, saga_id: str
    ) -> tuple[OrderInfo, bool, ValidatedOrder | None]:
        return record_order(
            conn,
            self.order_id,
            self.customer_id,
            self.items,
            self.shipping_address,
            self.payment_method,
            self.idempotency_key,
            False,  # strict: the saga fails an unknown customer or product, as create_order's
            True,  # checkout
            self.chosen_id,
            self.request_fingerprint,
            self.catalogue,
            saga_id,
        )


class OrderService:
    """Create, read and update orders."""

    def __init__(
        self,
        db: ShopExecutor,
        catalogue: CatalogueSource | None = None,
        prevalidated: Prevalidated | None = None,
    ) -> None:
        self._db = db
        # Separate services: prices and accounts come from their APIs, not this database.
        self._catalogue = catalogue
        # Where an order checked out here leaves its validation for the saga's first step.
        self._prevalidated = prevalidated

    async def create_order(
        self,
        customer_id: str,
        items: Sequence[OrderLine],
        *,
        shipping_address: Address | None = None,
        payment_method: str = "card",
        idempotency_key: str | None = None,
        order_id: str | None = None,
        chosen_id: bool | None = None,
        strict: bool = False,
        checkout: bool = False,
        request_fingerprint: str | None = None,
    ) -> tuple[OrderInfo, bool]:
        """Record an order priced from the catalog; returns ``(order, created)``. ``checkout``:
        it is being checked out (``processing``; start its saga next), else a ``pending`` draft.

        With an ``idempotency_key`` already used, the existing order is returned with
        ``created=False`` and nothing is written (also under a race: the unique constraint
        decides). So is the order already recorded under ``order_id`` (the primary key decides
        a race): comparing it with the request is the caller's business. The shipping address
        defaults to the customer's.

        ``chosen_id`` (default: whether ``order_id`` is given) says the client chose
        ``order_id``; False for an id the caller generated (a fresh UUID), which no recorded
        order can have: then it is not looked up first.

        ``strict=False`` (default) records orders for unknown customers or products too (an
        unknown product is priced 0), so that the saga fails them with the exact "User not
        found" / "Product not found" message like the seed service. ``strict=True`` raises
        :class:`UserNotFound` / :class:`ProductNotFound` up front instead (for a 422/404).
        """
        if not items:
            raise ValueError("an order needs at least one item")
        chosen = order_id is not None if chosen_id is None else chosen_id
        catalogue = None
        if self._catalogue is not None:
            catalogue = await self._catalogue.catalogue(
                customer_id, sorted({item.product_id for item in items})
            )
        try:
            order, created, validated = await self._db.write(
                record_order,
                order_id or new_order_id(),
                customer_id,
                items,
                shipping_address,
                payment_method,
                idempotency_key,
                strict,
                checkout,
                chosen,
                request_fingerprint,
                catalogue,
            )
        except IntegrityError:
            # Two first requests with one key or one client-chosen id at once: the loser reads
            # the winner's order.
            existing = await self.recorded_by(idempotency_key, order_id if chosen else None)
            if existing is None:
                raise
            return existing, False
        if validated is not None and self._prevalidated is not None:
            self._prevalidated.remember(validated)
        return order, created

    async def new_checkout(
        self,
        store: object,
        customer_id: str,
        items: Sequence[OrderLine],
        *,
        order_id: str,
        chosen_id: bool,
        shipping_address: Address | None = None,
        payment_method: str = "card",
        idempotency_key: str | None = None,
        request_fingerprint: str | None = None,
    ) -> NewCheckout | None:
        """``create_order(..., checkout=True)`` as a :class:`NewCheckout`, to be recorded in
        the transaction of the saga log ``store`` that creates its saga; None where the orders
        are written in transactions of their own (another database, another file)."""
        if not self._db.writes_in(store):
            return None
        if not items:
            raise ValueError("an order needs at least one item")
        catalogue = None
        if self._catalogue is not None:
            catalogue = await self._catalogue.catalogue(
                customer_id, sorted({item.product_id for item in items})
            )
        return NewCheckout(
            self._db,
            order_id,
            customer_id,
            items,
            shipping_address,
            payment_method,
            idempotency_key,
            chosen_id,
            request_fingerprint,
            catalogue,
        )

    async def recorded_by(
        self, idempotency_key: str | None, chosen_id: str | None
    ) -> OrderInfo | None:
        """After a write lost a race (``IntegrityError``): the order another request recorded
        under ``idempotency_key`` or the client-chosen id, if any."""
        existing = None
        if idempotency_key is not None:
            existing = await self.get_by_idempotency_key(idempotency_key)
        if existing is None and chosen_id is not None:
            existing = await self.get_order(chosen_id)
        return existing

    def checked_out(self, checkout: NewCheckout) -> OrderInfo:
        """The order ``checkout`` recorded, its saga created (durably): what its saga's first
        step may take from it is remembered (as :meth:`create_order` does)."""
        assert checkout.order is not None
        if checkout.validated is not None and self._prevalidated is not None:
            self._prevalidated.remember(checkout.validated)
        return checkout.order

    async def get_order(self, order_id: str) -> OrderInfo | None:
        if "\x00" in order_id:  # no order has one, and PostgreSQL refuses it in a query
            return None
        return await self._db.read(get_order, order_id)

    async def get_by_idempotency_key(self, idempotency_key: str) -> OrderInfo | None:
        return await self._db.read(get_by_idempotency_key, idempotency_key)

    async def get_by_saga(self, saga_id: str) -> OrderInfo | None:
        return await self._db.read(get_by_saga, saga_id)

    async def list_orders(
        self, *, limit: int = 50, offset: int = 0, status: OrderStatus | str | None = None
    ) -> list[OrderInfo]:
        """Newest first."""
        wanted = None if status is None else OrderStatus(status)
        return await self._db.read(list_orders, limit, offset, wanted)

    async def attach_saga(self, order_id: str, saga_id: str) -> bool:
        """See :func:`attach_saga`."""
        return await self._db.write(attach_saga, order_id, saga_id)

    async def mirror_saga(
        self, order_id: str, saga_id: str, status: OrderStatus, error: str | None
    ) -> bool:
        """See :func:`mirror_saga`."""
        return await self._db.write(mirror_saga, order_id, saga_id, status, error)

    def completed_in_saga_log(self, order_id: str, saga_id: str) -> Callable[[Any], bool] | None:
        """The mirror of ``saga_id`` SUCCEEDED as a ``ctx.atomic()`` write for the step whose
        outcome is written with the saga's SUCCEEDED (its last), or None where the orders do
        not live in the saga log's database (see :meth:`ShopExecutor.in_saga_log`)."""
        return self._db.in_saga_log(mirror_saga, order_id, saga_id, OrderStatus.COMPLETED, None)

    @property
    def mirrors_success_in_saga(self) -> bool:
        """Whether :meth:`completed_in_saga_log` gives a write (see :mod:`checkout.tracking`)."""
        return self._db.shares_saga_log

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
        return await self._db.write(update_status, order_id, OrderStatus(status), error, saga_id)

    async def processing(
        self, after: str, limit: int, grace_seconds: float
    ) -> list[tuple[str, str]]:
        """See :func:`processing_orders`; ``grace_seconds`` skips orders updated that recently."""
        before = utcnow() - timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
        return await self._db.read(processing_orders, after, limit, before)

    async def unstarted(self, after: str, limit: int, grace_seconds: float) -> list[str]:
        """See :func:`unstarted_orders`; ``grace_seconds`` skips orders updated that recently
        (their saga is being started right now)."""
        before = utcnow() - timedelta(seconds=grace_seconds) if grace_seconds > 0 else None
        return await self._db.read(unstarted_orders, after, limit, before)
