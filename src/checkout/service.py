"""The checkout application service: place an order, check out a draft, read an order with its
saga. The HTTP routes and the ``checkout demo`` CLI are thin layers over this.

Unknown customers and products are **not** rejected up front: the order is recorded and its
saga fails at ``validate_order`` with "User not found" / "Product not found" (order ``failed``,
saga ``COMPENSATED``, HTTP 201), exactly like any other business failure, so clients see one
failure path. Request-shape errors (unknown fields, quantity <= 0, empty items, an ``amount``
that differs from the catalog total) are the only up-front rejections (422).

**A database blip never hides a recorded order behind a 5xx.** Placing an order is: look up its
Idempotency-Key, record the order, start its saga, wait for it. A failure *before* the order is
recorded raises :class:`OrderUnavailable` (HTTP 503: nothing was recorded, safe to retry). A
failure *while* recording it is checked by reading the order back (its id is chosen here): if
it was recorded, go on; if that cannot be told either, :class:`OrderUnavailable` says so. Once
the order is recorded, any failure to start or read its saga answers the order as it is
(``processing``, HTTP 202 with its ``Location``): the saga is started by reconciliation if the
start did not happen, and a client that retried after a 5xx without an Idempotency-Key would
have bought twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from checkout.dbfaults import NotConnected, ShopUnavailable, is_unavailable
from checkout.domain.models import Address, OrderInfo, OrderLine, OrderStatus
from checkout.domain.rules import order_total, price_lines
from checkout.participants import GatewayParticipants
from checkout.participants.orders import new_order_id
from checkout.tracking import OrderTracker, order_status_for
from sagaway import Engine, SagaRecord, StoreError

log = logging.getLogger("checkout.service")

# What a database raises through the shop (SQLAlchemy; the SQLite saga store's group commit for
# shop writes in its file) or the saga log. Before the order is recorded only an unreachable
# database (``is_unavailable``) becomes a 503; after it, none of these becomes a 5xx.
UNAVAILABLE = (ShopUnavailable, SQLAlchemyError, StoreError, OSError)

NOT_RECORDED = (
    "The shop database is unavailable; the order was not recorded. Try again "
    "(with an Idempotency-Key, a retry can never place it twice)."
)
IN_DOUBT = (
    "The shop database failed while recording the order and cannot tell whether it was "
    "recorded. Retry with the same Idempotency-Key: that returns the order if it exists."
)
NOT_STARTED = (
    "The saga log is unavailable; the checkout did not start. Try again: an order has one "
    "checkout saga, so a retry never starts a second."
)


class OrderNotFound(LookupError):
    """No order with that id."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} not found")
        self.order_id = order_id


class AmountMismatch(ValueError):
    """The client's ``amount`` is not the catalog total of the order."""


class PriceMismatch(AmountMismatch):
    """An item's client ``price`` is not its product's catalogue price."""


class OrderUnavailable(Exception):
    """A database failed before the order (or its checkout) was recorded; the message says
    what the client may do (HTTP 503)."""


class IdempotencyKeyReused(ValueError):
    """An ``Idempotency-Key`` sent with a request other than the one it was first used for.
    The message says nothing of the order recorded under it: it may be another client's."""

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was already used with a different request (another route, "
            "customer, items, address, payment method or amount): send the same request to "
            "retry it, or a new key for a new order"
        )


def same_request(order: OrderInfo, customer_id: str, request_fingerprint: str | None) -> bool:
    """Whether a request fingerprinted ``request_fingerprint`` (for ``customer_id``) is the one
    that recorded ``order`` under its key. An order recorded before fingerprints existed is
    matched by customer, so a key never hands one customer's order to another."""
    if order.request_fingerprint is None or request_fingerprint is None:
        return order.customer_id == customer_id
    return order.request_fingerprint == request_fingerprint


class OrderConflict(ValueError):
    """A client-chosen order id (or an idempotency key) is taken by a different order."""


def _differences(
    order: OrderInfo,
    customer_id: str,
    items: Sequence[OrderLine],
    shipping_address: Address | None,
    payment_method: str,
    amount_cents: int | None,
) -> list[str]:
    """What a repeated request asks for that the recorded ``order`` is not. An omitted
    shipping address matches any (the order recorded the account's default)."""
    differ = []
    if order.customer_id != customer_id:
        differ.append("customer")
    if [(i.product_id, i.quantity) for i in order.items] != [
        (i.product_id, i.quantity) for i in items
    ]:
        differ.append("items")
    if shipping_address is not None and shipping_address != order.shipping_address:
        differ.append("shipping_address")
    if payment_method != order.payment_method:
        differ.append("payment_method")
    if amount_cents is not None and amount_cents != order.total_cents:
        differ.append("amount")
    return differ


@dataclass(frozen=True, slots=True)
class OrderView:
    """An order together with its saga (None for a draft), status derived from the saga."""

    order: OrderInfo
    saga: SagaRecord | None
    status: OrderStatus
    error: str | None

    @property
    def finished(self) -> bool:
        """True when there is nothing more to wait for: a draft, or its saga is terminal. An
        order ``processing`` whose saga could not be read is not finished."""
        if self.saga is None:
            return self.status is not OrderStatus.PROCESSING
        return self.saga.status.is_terminal


class CheckoutService:
    def __init__(
        self,
        participants: GatewayParticipants,
        engine: Engine,
        tracker: OrderTracker,
    ) -> None:
        self.participants = participants
        self.engine = engine
        self.tracker = tracker

    async def quote(self, items: Sequence[OrderLine]) -> int:
        """The catalog total in cents (unknown products count 0: their saga fails anyway)."""
        prices = await self.participants.shop.prices(sorted({i.product_id for i in items}))
        return order_total(
            price_lines(items, {i.product_id: prices.get(i.product_id, 0) for i in items})
        )

    async def place_order(
        self,
        customer_id: str,
        items: Sequence[OrderLine],
        *,
        shipping_address: Address | None = None,
        payment_method: str = "card",
        amount_cents: int | None = None,
        client_prices: Sequence[tuple[str, int]] = (),
        checkout: bool = True,
        idempotency_key: str | None = None,
        order_id: str | None = None,
        request_fingerprint: str | None = None,
        wait: float = 0.0,
    ) -> tuple[OrderView, bool]:
        """Record the order and (unless ``checkout`` is false) start its saga, then wait up to
        ``wait`` seconds for it. Returns ``(view, created)``; a repeated ``idempotency_key``
        returns the first order (``created=False``) and starts no second saga, provided the
        request is the same (``request_fingerprint``, stored with the key): else
        :class:`IdempotencyKeyReused`.

        ``order_id``: the client's own id for the order. Repeating it with the same request is
        idempotent like a key; with a different request it raises :class:`OrderConflict`.

        ``client_prices``: ``(product_id, cents)`` the client states for its items; one that
        is not the catalogue price raises :class:`PriceMismatch` (an unknown product is left
        to the saga, which fails it with "Product not found").

        Raises :class:`OrderUnavailable` when a database fails before the order is recorded;
        after that, never a database error (see the module docstring)."""
        orders = self.participants.orders
        order: OrderInfo | None = None
        created = False
        try:
            if idempotency_key is not None:
                order = await orders.get_by_idempotency_key(idempotency_key)
                if order is not None and not same_request(order, customer_id, request_fingerprint):
                    raise IdempotencyKeyReused()
            if order is None and order_id is not None:
                order = await orders.get_order(order_id)
            if order is None and client_prices:
                await self._check_prices(client_prices)
            if order is None and amount_cents is not None:
                total = await self.quote(items)
                if total != amount_cents:
                    raise AmountMismatch(
                        f"amount {amount_cents / 100:.2f} does not match the order total "
                        f"{total / 100:.2f}"
                    )
        except UNAVAILABLE as exc:
            if not is_unavailable(exc):
                raise
            log.warning("placing an order: nothing recorded: %s", _summary(exc))
            raise OrderUnavailable(NOT_RECORDED) from exc
        if order is None:
            new_id = order_id or new_order_id()
            try:
                placed = None
                if checkout:  # the order and its saga in one write, where they share one log
                    placed = await self._record_and_start(
                        customer_id,
                        items,
                        order_id=new_id,
                        chosen_id=order_id is not None,
                        shipping_address=shipping_address,
                        payment_method=payment_method,
                        idempotency_key=idempotency_key,
                        request_fingerprint=request_fingerprint,
                    )
                if placed is None:
                    placed = await orders.create_order(
                        customer_id,
                        items,
                        shipping_address=shipping_address,
                        payment_method=payment_method,
                        idempotency_key=idempotency_key,
                        order_id=new_id,
                        chosen_id=order_id is not None,
                        checkout=checkout,
                        request_fingerprint=request_fingerprint,
                    )
                order, created = placed
            except UNAVAILABLE as exc:
                if not is_unavailable(exc):
                    raise
                order = await self._recorded_after_all(new_id, exc)
                created = True
        if (
            not created
            and idempotency_key is not None
            and order.idempotency_key == idempotency_key
            and not same_request(order, customer_id, request_fingerprint)
        ):
            raise IdempotencyKeyReused()  # a concurrent first request with that key won
        if not created and order_id is not None:
            self._same_request(
                order, order_id, customer_id, items, shipping_address, payment_method, amount_cents
            )
        return await self._go_on(order, checkout=checkout, wait=wait), created

    async def _record_and_start(
        self,
        customer_id: str,
        items: Sequence[OrderLine],
        *,
        order_id: str,
        chosen_id: bool,
        shipping_address: Address | None,
        payment_method: str,
        idempotency_key: str | None,
        request_fingerprint: str | None,
    ) -> tuple[OrderInfo, bool] | None:
        """The order recorded with its saga created in the same transaction
        (``OrderTracker.record_and_start``), or None where that cannot be (nothing written)."""
        checkout = await self.participants.orders.new_checkout(
            self.engine.store,
            customer_id,
            items,
            order_id=order_id,
            chosen_id=chosen_id,
            shipping_address=shipping_address,
            payment_method=payment_method,
            idempotency_key=idempotency_key,
            request_fingerprint=request_fingerprint,
        )
        if checkout is None:
            return None
        try:
            return await self.tracker.record_and_start(checkout)
        except IntegrityError:
            # Two first requests with one key or one client-chosen id at once, in two
            # processes: the loser reads the winner's order (as create_order does).
            existing = await self.participants.orders.recorded_by(
                idempotency_key, order_id if chosen_id else None
            )
            if existing is None:
                raise
            return existing, False

    async def _check_prices(self, client_prices: Sequence[tuple[str, int]]) -> None:
        catalogue = await self.participants.shop.prices(sorted({p for p, _ in client_prices}))
        for product_id, cents in client_prices:
            actual = catalogue.get(product_id)
            if actual is not None and actual != cents:
                raise PriceMismatch(
                    f"price {cents / 100:.2f} of {product_id} does not match its catalogue "
                    f"price {actual / 100:.2f}"
                )

    async def _recorded_after_all(self, order_id: str, failure: BaseException) -> OrderInfo:
        """Recording ``order_id`` failed (``failure``): its commit may have happened all the
        same. Read it back: the order if it is there, else :class:`OrderUnavailable`."""
        if isinstance(failure, NotConnected):  # nothing was sent
            log.warning("order %s: not recorded: %s", order_id, _summary(failure))
            raise OrderUnavailable(NOT_RECORDED) from failure
        try:
            order = await self.participants.orders.get_order(order_id)
        except UNAVAILABLE as exc:
            log.warning(
                "order %s: recording failed (%s) and cannot be checked: %s",
                order_id,
                _summary(failure),
                _summary(exc),
            )
            raise OrderUnavailable(IN_DOUBT) from failure
        if order is None:
            log.warning("order %s: not recorded: %s", order_id, _summary(failure))
            raise OrderUnavailable(NOT_RECORDED) from failure
        log.warning("order %s: recorded although the write reported %s", order_id, failure)
        return order

    async def _go_on(self, order: OrderInfo, *, checkout: bool, wait: float) -> OrderView:
        """The rest of placing a recorded order: start its saga, wait for it. Nothing here
        may turn into a 5xx (see the module docstring)."""
        saga_id: str | None = None
        try:
            if checkout and order.saga_id is None:
                # Also completes a repeat whose first attempt died between the two writes.
                saga_id = await self.tracker.start_checkout(order)
            return await self.view(order, wait=wait, started=saga_id)
        except Exception as exc:  # recorded: whatever failed, the order is answered (202)
            if saga_id is not None:
                order = _started(order, saga_id)
            if isinstance(exc, UNAVAILABLE):
                log.warning(
                    "order %s is recorded, its saga cannot be started or read now (%s): "
                    "answering it as it stands",
                    order.id,
                    _summary(exc),
                )
            else:
                log.exception("order %s is recorded; answering it as it stands", order.id)
            return OrderView(order, None, order.status, order.error)

    @staticmethod
    def _same_request(
        order: OrderInfo,
        order_id: str,
        customer_id: str,
        items: Sequence[OrderLine],
        shipping_address: Address | None,
        payment_method: str,
        amount_cents: int | None,
    ) -> None:
        if order.id != order_id:
            raise OrderConflict(
                f"the Idempotency-Key was used for order {order.id}, not {order_id}"
            )
        differ = _differences(
            order, customer_id, items, shipping_address, payment_method, amount_cents
        )
        if differ:
            raise OrderConflict(
                f"order {order_id} already exists with a different {', '.join(differ)}; "
                "choose a new order_id"
            )

    async def checkout_order(self, order_id: str, *, wait: float = 0.0) -> tuple[OrderView, bool]:
        """Start the saga of a draft order; ``(view, started)``. An order already checked out
        returns its saga and starts nothing (``started=False``)."""
        order = await self.participants.orders.get_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        started = False
        if order.saga_id is None:
            try:
                order = await self._start(order)
            except UNAVAILABLE as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("order %s: checkout not started: %s", order.id, _summary(exc))
                raise OrderUnavailable(NOT_STARTED) from exc
            started = True
        try:
            view = await self.view(order, wait=wait)
        except UNAVAILABLE as exc:
            if not started:
                raise
            log.warning("order %s: saga started, cannot be read now: %s", order.id, _summary(exc))
            view = OrderView(order, None, order.status, order.error)
        return view, started

    async def _start(self, order: OrderInfo) -> OrderInfo:
        return _started(order, await self.tracker.start_checkout(order))

    async def get(self, order_id: str) -> OrderView:
        order = await self.participants.orders.get_order(order_id)
        if order is None:
            raise OrderNotFound(order_id)
        return await self.view(order, fresh=True)

    async def view(
        self,
        order: OrderInfo,
        *,
        wait: float = 0.0,
        fresh: bool = False,
        started: str | None = None,
    ) -> OrderView:
        """The order with its saga (waited for up to ``wait`` s); a lagging row is repaired.

        ``fresh``: ``order`` was just read from the database, so a status that lags the saga
        is repaired even when this process mirrored it (something reverted the row).
        ``started``: the saga just started for ``order`` (as recorded before it): the view's
        order is ``order`` with it, ``processing``; copied once with whatever else changes
        (a copy is ~1.4 us, two an order when each change made its own)."""
        changes: dict[str, object] = {}
        saga_id, recorded = order.saga_id, order.status
        if started is not None:
            saga_id, recorded = started, OrderStatus.PROCESSING
            changes = {"saga_id": started, "status": recorded}
        if saga_id is None:
            return OrderView(order, None, order.status, order.error)
        if wait > 0:
            record = await self.engine.wait(saga_id, timeout=wait)
        else:
            found = await self.engine.store.load(saga_id, history=False)
            if found is None:  # pruned by retention (SAGAWAY_RETENTION_DAYS): the row has it
                order = order.model_copy(update=changes) if changes else order
                return OrderView(order, None, order.status, order.error)
            record = found
        status = order_status_for(record.status, record.error)
        error = record.error if status in (OrderStatus.FAILED, OrderStatus.CANCELLED) else None
        lagging = status is not recorded or error != order.error
        if record.status.is_terminal and lagging:
            # Usually the listener's write for the saga this process just ran: await it (read
            # your writes); otherwise the row lags (saga run elsewhere, a crash): repair it.
            # A repair that fails is left to reconciliation: the answer comes from the saga.
            try:
                if not await self.tracker.settled(record.id) or fresh:
                    await self.tracker.mirror(order.id, record.id, status, error)
            except UNAVAILABLE as exc:
                log.warning("order %s: status not repaired now: %s", order.id, _summary(exc))
            finished = datetime.fromtimestamp(record.updated_at, UTC)
            changes["updated_at"] = max(order.updated_at, finished)
        if changes:
            order = order.model_copy(update=changes)
        return OrderView(order, record, status, error)


def _started(order: OrderInfo, saga_id: str) -> OrderInfo:
    """``order`` as it is once its saga ``saga_id`` started."""
    return order.model_copy(update={"saga_id": saga_id, "status": OrderStatus.PROCESSING})


def _summary(exc: BaseException) -> str:
    """One line for the log (driver errors span several)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
