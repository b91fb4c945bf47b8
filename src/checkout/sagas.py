"""The checkout saga: validate -> reserve inventory -> take payment -> ship, compensated in
reverse when a step fails.

The saga is built by a factory around the participants instead of living at module level, so
the service, the tests and the demo CLI each bind it to their own database. Steps translate the
domain's business errors into ``StepFailed`` with the exact message (no retry, compensate); any
other exception (a dropped connection, a timeout) is retried by the engine with the same
idempotency key, which the participants dedupe on.

A database error never reaches a step's (so an order's) error as driver text: it becomes
:class:`~checkout.dbfaults.ShopUnavailable` ("The shop database is unavailable": a refused,
dropped or exhausted connection) or :class:`~checkout.dbfaults.ShopError`, and the driver's
message is logged. The retry policies are long enough to ride out a blip: a PostgreSQL restart,
"too many clients" while connections drain, a terminated session.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from checkout.dbfaults import ShopUnavailable, readable
from checkout.domain.models import (
    CheckoutError,
    OrderInput,
    Payment,
    PaymentStatus,
    Reservation,
    ReservationStatus,
    Shipment,
    ShipmentStatus,
    ValidatedOrder,
)
from checkout.participants import CheckoutParticipants
from sagaway import RetryPolicy, Saga, Step, StepContext, StepFailed, StoreError
from sagaway.step_call import describe_error

SAGA_NAME = "checkout"
SAGA_VERSION = 1
STEP_NAMES = ("validate_order", "reserve_inventory", "process_payment", "ship_order")

# A participant call is one short database transaction: 5 s covers a queue of writers on
# SQLite's busy_timeout. Its failures that are not business errors are the database's
# (connection refused or dropped, too many clients): forward steps retry for ~11 s of backoff
# (0.1, 0.2 ... 3.2, 5 s) before the saga gives up and compensates; compensations, which
# must not give up (a saga left FAILED needs an operator), for ~76 s (then 5 s apart).
STEP_RETRY = RetryPolicy(max_attempts=8, initial_delay=0.1, max_delay=5.0)
COMPENSATION_RETRY = RetryPolicy(max_attempts=20, initial_delay=0.1, max_delay=5.0)
STEP_TIMEOUT = 5.0

T = TypeVar("T")


async def _business(call: Awaitable[T]) -> T:
    """Await a participant call, turning a business error into ``StepFailed(message)``."""
    try:
        return await _shop(call)
    except CheckoutError as exc:
        raise StepFailed(exc.message) from exc


async def _shop(call: Awaitable[T]) -> T:
    """Await a participant call; a database error becomes a readable one (still transient:
    the step's policy retries it), its driver text goes to the log only."""
    try:
        return await call
    except (ShopUnavailable, SQLAlchemyError, StoreError, OSError) as exc:
        raise readable(exc, "checkout step") from exc


def _in_step(
    ctx: StepContext,
    enlisted: tuple[Callable[[Any], Any], T],
    done: Enum,
    what: str,
) -> T:
    """A participant's write ``enlisted`` (``(write, made)``, from its ``*_in_saga_log``) as a
    ``ctx.atomic()`` write of the step, which returns ``made``, what the write makes: the write
    then commits with the step's outcome, in the saga log's transaction, or not at all (no
    write and group-commit participation of its own before it). Its business error refuses
    that transaction with the message the step gives on the separate write's path
    (``_business``); a write that finds a record under the key (a repeat: recorded by a write
    of its own before this step's outcome was) answers as there: a tombstone (not ``done``)
    fails the step; the same record is the step's output; a different one cannot be (one key,
    one call's arguments) and stops the saga for an operator."""
    write, made = enlisted

    def effect(conn: Any) -> None:
        try:
            recorded = write(conn)
        except CheckoutError as exc:
            raise StepFailed(exc.message) from exc
        except (SQLAlchemyError, OSError) as exc:  # (its driver text to the log only)
            raise readable(exc, "checkout step") from exc
        if recorded is not None:
            if recorded.status is not done:
                raise StepFailed(f"{what} {recorded.status.value}")
            if recorded != made:
                raise RuntimeError(f"{what} {recorded.idempotency_key} is recorded otherwise")

    ctx.atomic(effect)
    return made


def _undo_in_step(ctx: StepContext, write: Callable[[Any], None]) -> None:
    """A participant's compensating write (from its ``*_in_saga_log``) as a ``ctx.atomic()``
    write of the compensation: it commits with the compensation's outcome, or not at all (a
    crash before that commit leaves neither: the compensation runs again, its write fresh;
    after it, both, and ``undo_once``'s guards make a repeat write nothing). Whatever it
    raises refuses that transaction, which a compensation takes as its own failure: retried
    under ``compensation_retry``, then FAILED, with the error text the separate write's path
    (``_shop``) gives, as there (a database error is still retried, not a halt)."""

    def effect(conn: Any) -> None:
        try:
            write(conn)
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:  # (driver text: the log's)
            raise StepFailed(describe_error(readable(exc, "checkout step"))) from exc
        except Exception as exc:  # a line that cannot move back: a bug or a manual edit
            raise StepFailed(describe_error(exc)) from exc

    ctx.atomic(effect)


def _validated(ctx: StepContext) -> ValidatedOrder:
    return ValidatedOrder.model_validate(ctx.results["validate_order"])


def _step(saga: Saga, action: Callable[..., Awaitable[Any]]) -> Step[Any]:
    step: Step[Any] = saga.step(
        retry=STEP_RETRY,
        timeout=STEP_TIMEOUT,
        compensation_retry=COMPENSATION_RETRY,
        compensation_timeout=STEP_TIMEOUT,
    )(action)
    return step


def build_checkout_saga(
    participants: CheckoutParticipants,
    *,
    name: str = SAGA_NAME,
    version: int = SAGA_VERSION,
    success_in_saga: bool = False,
) -> Saga:
    """The checkout saga bound to ``participants``. Bump ``version`` when the steps change
    incompatibly: instances in flight resume with the definition that started them.

    ``success_in_saga``: the last step writes the order ``completed`` in the saga's SUCCEEDED
    transaction; only for orders in the engine's own SQLite store file
    (``OrderService.mirrors_success_in_saga``), with an ``OrderTracker`` told the same. The
    participants' forward writes (reserve, charge, create the shipment) then ride their steps'
    transitions too (``ctx.atomic()``, see ``_in_step``), a business refusal (an address
    that cannot be shipped to among them) refusing the transition, and so do the
    compensations' writes (release, refund, cancel: ``_undo_in_step``)."""
    p = participants
    saga = Saga(name, version=version)

    async def validate_order(ctx: StepContext, order: OrderInput) -> ValidatedOrder:
        # Read-only: nothing to compensate.
        return await _business(p.shop.validate_order(order))

    async def reserve_inventory(ctx: StepContext, order: OrderInput) -> Reservation:
        if success_in_saga:
            enlisted = p.inventory.reserve_in_saga_log(
                ctx.idempotency_key, order.order_id, order.items
            )
            if enlisted is not None:
                return _in_step(ctx, enlisted, ReservationStatus.RESERVED, "Reservation")
        reservation = await _business(
            p.inventory.reserve(ctx.idempotency_key, order.order_id, order.items)
        )
        if reservation.status is not ReservationStatus.RESERVED:
            # A tombstone: this saga already compensated the step; the late call did nothing.
            raise StepFailed(f"Reservation {reservation.status.value}")
        return reservation

    async def release_inventory(
        ctx: StepContext, order: OrderInput, reservation: Reservation | None
    ) -> None:
        # Looked up by the forward key, not by ``reservation``: that is None when the
        # action's outcome is uncertain, and the participant knows what really happened.
        if success_in_saga:
            write = p.inventory.release_in_saga_log(
                ctx.forward_key, ctx.idempotency_key, order_id=order.order_id
            )
            if write is not None:
                _undo_in_step(ctx, write)
                return
        await _shop(
            p.inventory.release(ctx.forward_key, ctx.idempotency_key, order_id=order.order_id)
        )

    async def process_payment(ctx: StepContext, order: OrderInput) -> Payment:
        validated = _validated(ctx)
        if success_in_saga:
            enlisted = p.payment.charge_in_saga_log(
                ctx.idempotency_key, order.order_id, order.customer_id, validated.total_cents
            )
            if enlisted is not None:
                return _in_step(ctx, enlisted, PaymentStatus.CAPTURED, "Payment")
        payment = await _business(
            p.payment.charge(
                ctx.idempotency_key, order.order_id, order.customer_id, validated.total_cents
            )
        )
        if payment.status is not PaymentStatus.CAPTURED:
            raise StepFailed(f"Payment {payment.status.value}")
        return payment

    async def refund_payment(ctx: StepContext, order: OrderInput, payment: Payment | None) -> None:
        if success_in_saga:
            write = p.payment.refund_in_saga_log(
                ctx.forward_key,
                ctx.idempotency_key,
                order_id=order.order_id,
                account_id=order.customer_id,
            )
            if write is not None:
                _undo_in_step(ctx, write)
                return
        await _shop(
            p.payment.refund(
                ctx.forward_key,
                ctx.idempotency_key,
                order_id=order.order_id,
                account_id=order.customer_id,
            )
        )

    async def ship_order(ctx: StepContext, order: OrderInput) -> Shipment:
        validated = _validated(ctx)
        enlisted = (
            p.shipping.create_in_saga_log(
                ctx.idempotency_key, order.order_id, validated.shipping_address, order.items
            )
            if success_in_saga
            else None
        )
        if enlisted is not None:
            shipment = _in_step(ctx, enlisted, ShipmentStatus.CREATED, "Shipment")
        else:
            shipment = await _business(
                p.shipping.create_shipment(
                    ctx.idempotency_key, order.order_id, validated.shipping_address, order.items
                )
            )
            if shipment.status is not ShipmentStatus.CREATED:
                raise StepFailed(f"Shipment {shipment.status.value}")
        # The last step: its outcome is written with the saga's SUCCEEDED, in one transaction,
        # so where the orders live in the saga log's file the order's ``completed`` rides that
        # write (no write of its own, no window in which the saga is done and the row is not;
        # the tracker then skips its own mirror). Elsewhere the tracker mirrors it.
        if success_in_saga:
            completed = p.orders.completed_in_saga_log(order.order_id, ctx.saga_id)
            if completed is not None:
                ctx.atomic(completed)
        return shipment

    async def cancel_shipment(
        ctx: StepContext, order: OrderInput, shipment: Shipment | None
    ) -> None:
        if success_in_saga:
            write = p.shipping.cancel_in_saga_log(
                ctx.forward_key, ctx.idempotency_key, order_id=order.order_id
            )
            if write is not None:
                _undo_in_step(ctx, write)
                return
        await _shop(
            p.shipping.cancel_shipment(
                ctx.forward_key, ctx.idempotency_key, order_id=order.order_id
            )
        )

    # Registered by call rather than as decorators so the functions keep their types for
    # mypy; the order of registration is the order of the steps.
    _step(saga, validate_order)
    _step(saga, reserve_inventory).compensation(release_inventory)
    _step(saga, process_payment).compensation(refund_payment)
    _step(saga, ship_order).compensation(cancel_shipment)
    return saga


# --------------------------------------------------------------------------- separate services


class OrderValidator(Protocol):
    async def validate_order(self, order: OrderInput) -> ValidatedOrder: ...


def build_remote_checkout_saga(
    shop: OrderValidator,
    *,
    name: str = SAGA_NAME,
    version: int = SAGA_VERSION,
) -> Saga:
    """The checkout saga with payment, inventory and shipping as separate services: the same
    steps (names, order, retry policies, failure messages) as :func:`build_checkout_saga`, the
    participant steps being remote steps (``saga.remote``): each sends its command through the
    engine's transport (``Engine(transport=...)``: HTTP, or RabbitMQ with the saga parked while
    the command is out), its ``message_id`` the step's idempotency key, deduped by the service's
    inbox; its compensation sends the undo command, with the same payload, and ``forward_key``.
    ``validate_order`` stays local: it reads the services' APIs through ``shop``.

    A business failure comes back as a refusal (the step fails with its message); a transport
    failure or a missing reply is transient: re-sent with the same key, then uncertain.
    """
    saga = Saga(name, version=version)

    def lines(order: OrderInput) -> list[dict[str, Any]]:
        return [line.model_dump(mode="json") for line in order.items]

    def remote(
        participant: str, command: str, reply: type[Any], compensation: str
    ) -> Callable[[Callable[..., Any]], Step[Any]]:
        return saga.remote(
            participant,
            command,
            reply=reply,
            compensation=compensation,
            retry=STEP_RETRY,
            timeout=STEP_TIMEOUT,
            compensation_retry=COMPENSATION_RETRY,
            compensation_timeout=STEP_TIMEOUT,
        )

    async def validate_order(ctx: StepContext, order: OrderInput) -> ValidatedOrder:
        return await _business(shop.validate_order(order))

    def reserve_inventory(ctx: StepContext, order: OrderInput) -> dict[str, Any]:
        return {"order_id": order.order_id, "items": lines(order)}

    def process_payment(ctx: StepContext, order: OrderInput) -> dict[str, Any]:
        return {
            "order_id": order.order_id,
            "account_id": order.customer_id,
            "amount_cents": _validated(ctx).total_cents,
        }

    def ship_order(ctx: StepContext, order: OrderInput) -> dict[str, Any]:
        address = _validated(ctx).shipping_address
        return {
            "order_id": order.order_id,
            "address": None if address is None else address.model_dump(mode="json"),
            "items": lines(order),
        }

    _step(saga, validate_order)
    remote("inventory", "reserve", Reservation, "release")(reserve_inventory)
    remote("payment", "start", Payment, "refund")(process_payment)
    remote("shipping", "create", Shipment, "cancel")(ship_order)
    return saga
