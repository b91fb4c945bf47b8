"""Value objects of the checkout domain: what flows between the API, the saga and participants.

They are Pydantic models because saga step inputs and outputs are stored in the saga log as JSON
and decoded again on recovery; a model round-trips exactly, a hand-rolled dict does not.
Amounts are integer cents (see :mod:`checkout.domain.money`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class OrderStatus(StrEnum):
    PENDING = "pending"  # a draft: recorded without checkout, no saga yet
    # Checked out: its saga is running, or about to start (an order recorded just before a
    # crash gets its saga from the tracker's reconciliation).
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PaymentStatus(StrEnum):
    CAPTURED = "captured"
    REFUNDED = "refunded"
    VOID = "void"  # tombstone: refunded before it was ever charged; a late charge is a no-op


class ReservationStatus(StrEnum):
    RESERVED = "reserved"
    RELEASED = "released"
    CANCELLED = "cancelled"  # tombstone: released before it was ever reserved


class ShipmentStatus(StrEnum):
    CREATED = "created"
    CANCELLED = "cancelled"
    VOID = "void"  # tombstone: cancelled before it was ever created


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Address(_Frozen):
    """A shipping address. Every field may be missing here: whether an address is deliverable
    is a business rule (:func:`checkout.domain.rules.validate_address`), not a parse error, so an
    order with a bad address fails its saga with "Invalid shipping address" like the seed did."""

    street: str | None = None
    city: str | None = None
    province: str | None = None
    postal_code: str | None = None
    country: str | None = None


class OrderLine(_Frozen):
    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class PricedLine(_Frozen):
    product_id: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)

    @property
    def total_cents(self) -> int:
        return self.unit_price_cents * self.quantity


class OrderInput(_Frozen):
    """The checkout saga's input: an order already recorded in the shop database."""

    order_id: str
    customer_id: str
    items: list[OrderLine] = Field(min_length=1)
    shipping_address: Address | None = None  # None: the account's default address
    payment_method: str = "card"


class ValidatedOrder(_Frozen):
    """Output of ``validate_order``: the order priced from the catalog, address resolved."""

    order_id: str
    customer_id: str
    lines: list[PricedLine]
    total_cents: int
    shipping_address: Address | None


class Reservation(_Frozen):
    idempotency_key: str
    order_id: str | None
    items: list[OrderLine]
    status: ReservationStatus
    compensation_key: str | None = None


class Payment(_Frozen):
    idempotency_key: str
    order_id: str | None
    account_id: str | None
    amount_cents: int
    status: PaymentStatus
    compensation_key: str | None = None


class Shipment(_Frozen):
    idempotency_key: str
    order_id: str | None
    courier: str | None
    items: list[OrderLine]
    status: ShipmentStatus
    compensation_key: str | None = None


class ProductInfo(_Frozen):
    id: str
    name: str
    price_cents: int
    stock: int  # available to reserve
    reserved: int  # held by orders in flight (or completed but not yet shipped)
    shipped: int


class AccountInfo(_Frozen):
    id: str
    name: str
    balance_cents: int
    shipping_address: Address | None


class OrderInfo(_Frozen):
    id: str
    customer_id: str
    status: OrderStatus
    total_cents: int
    items: list[PricedLine]
    shipping_address: Address | None
    payment_method: str
    saga_id: str | None
    idempotency_key: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    request_fingerprint: str | None = None  # of the request that first used idempotency_key


# Business errors. Their messages are part of the public contract (clients and the seed tests
# match on them), so each class carries a fixed message and the saga turns it into
# ``StepFailed(message)`` verbatim. A business error is final: retrying gives the same answer.

USER_NOT_FOUND = "User not found"
PRODUCT_NOT_FOUND = "Product not found"
INSUFFICIENT_INVENTORY = "Insufficient inventory"
INSUFFICIENT_FUNDS = "Insufficient funds"
INVALID_SHIPPING_ADDRESS = "Invalid shipping address"


class CheckoutError(Exception):
    """Base class of business failures; ``message`` is the exact client-facing text."""

    message: ClassVar[str] = "Checkout failed"

    def __init__(self, detail: str | None = None) -> None:
        # ``detail`` (e.g. which product) is for logs; str(exc) stays the exact message.
        super().__init__(self.message)
        self.detail = detail

    def __str__(self) -> str:
        return self.message


class UserNotFound(CheckoutError):
    message = USER_NOT_FOUND


class ProductNotFound(CheckoutError):
    message = PRODUCT_NOT_FOUND


class InsufficientInventory(CheckoutError):
    message = INSUFFICIENT_INVENTORY


class InsufficientFunds(CheckoutError):
    message = INSUFFICIENT_FUNDS


class InvalidShippingAddress(CheckoutError):
    message = INVALID_SHIPPING_ADDRESS
