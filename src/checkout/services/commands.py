"""The saga commands each service handles: ``(conn, payload, command) -> output``.

One function per command, over the service's own connection, in the transaction the participant
library opens (with its inbox row: a redelivered command gets the recorded reply, never a
second effect). They call the same operations as the embedded saga, keyed by the command's
``message_id`` (the step's idempotency key); a compensation finds the forward effect by
``forward_key`` and leaves a tombstone under it when there was none, so a late forward command
is refused. A business failure raises :class:`~checkout.domain.models.CheckoutError` with the
saga's message ("Insufficient funds"...).

Payloads (JSON) are what :mod:`checkout.sagas` builds:

* ``payment.start`` ``{order_id, account_id, amount_cents}`` -> Payment; ``payment.refund``
  ``{order_id, account_id}``;
* ``inventory.reserve`` ``{order_id, items: [{product_id, quantity}]}`` -> Reservation;
  ``inventory.release`` ``{order_id}``;
* ``shipping.create`` ``{order_id, address, items}`` -> Shipment (the courier is chosen here);
  ``shipping.cancel`` ``{order_id}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from checkout.domain import demo
from checkout.domain.models import (
    Address,
    CheckoutError,
    OrderLine,
    PaymentStatus,
    ReservationStatus,
    ShipmentStatus,
)
from checkout.domain.rules import address_problems, assign_courier
from checkout.participants import inventory, payment, shipping
from sagaway.transport import Command

Handler = Callable[[Connection, Any, Command], Any]


class NotApplied(CheckoutError):
    """The forward command found a tombstone: its saga compensated it before it arrived."""

    def __init__(self, what: str, status: str) -> None:
        super().__init__(status)
        self._text = f"{what} {status}"

    def __str__(self) -> str:
        return self._text


def _forward_key(command: Command) -> str:
    if command.forward_key is None:
        raise ValueError(f"{command.topic} is a compensation: it needs forward_key")
    return command.forward_key


def _lines(payload: dict[str, Any]) -> list[OrderLine]:
    return [OrderLine.model_validate(item) for item in payload["items"]]


def start_payment(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    done = payment.charge(
        conn,
        command.message_id,
        payload["order_id"],
        payload["account_id"],
        int(payload["amount_cents"]),
    )
    if done.status is not PaymentStatus.CAPTURED:
        raise NotApplied("Payment", done.status.value)
    return done.model_dump(mode="json")


def refund_payment(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    done = payment.refund(
        conn,
        _forward_key(command),
        command.message_id,
        order_id=payload.get("order_id"),
        account_id=payload.get("account_id"),
    )
    return done.model_dump(mode="json")


def reserve(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    done = inventory.reserve(conn, command.message_id, payload["order_id"], _lines(payload))
    if done.status is not ReservationStatus.RESERVED:
        raise NotApplied("Reservation", done.status.value)
    return done.model_dump(mode="json")


def release(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    done = inventory.release(
        conn, _forward_key(command), command.message_id, order_id=payload.get("order_id")
    )
    return done.model_dump(mode="json")


def courier_for(address: Address | None) -> str | None:
    if address is None or address_problems(address):
        return None
    return assign_courier(
        address, demo.COURIERS_BY_CITY, demo.COURIERS_BY_PROVINCE, demo.DEFAULT_COURIER
    )


def create_shipment(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    raw = payload.get("address")
    address = None if raw is None else Address.model_validate(raw)
    done = shipping.create_shipment(
        conn,
        command.message_id,
        payload["order_id"],
        address,
        _lines(payload),
        courier_for(address),
    )
    if done.status is not ShipmentStatus.CREATED:
        raise NotApplied("Shipment", done.status.value)
    return done.model_dump(mode="json")


def cancel_shipment(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    done = shipping.cancel_shipment(
        conn, _forward_key(command), command.message_id, order_id=payload.get("order_id")
    )
    return done.model_dump(mode="json")


# The compensations, with the forward command each undoes (the participant library's tombstones).
COMPENSATES: dict[tuple[str, str], str] = {
    ("payment", "refund"): "start",
    ("inventory", "release"): "reserve",
    ("shipping", "cancel"): "create",
}

COMMANDS: dict[str, dict[str, Handler]] = {
    "payment": {"start": start_payment, "refund": refund_payment},
    "inventory": {"reserve": reserve, "release": release},
    "shipping": {"create": create_shipment, "cancel": cancel_shipment},
}
