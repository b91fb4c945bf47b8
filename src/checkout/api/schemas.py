"""Request and response models of the HTTP API (Pydantic v2).

Requests forbid unknown fields. Money is ``Decimal`` with two places in the API and integer
cents inside; responses write it as a JSON *number* (``1000.0``, as the seed service did), which
is exact for any two-place amount below 10^13 since a float's shortest repr round-trips.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from checkout.domain.models import (
    AccountInfo,
    Address,
    OrderLine,
    OrderStatus,
    PricedLine,
    ProductInfo,
)
from checkout.domain.rules import from_cents, to_cents
from checkout.orderflow.tables import FlowOrderStatus
from sagaway import SagaStatus


def _money_json(value: Decimal) -> float:
    return float(value)


Money = Annotated[Decimal, PlainSerializer(_money_json, return_type=float, when_used="json")]

MAX_QUANTITY = 1_000_000
MAX_ITEMS = 100

# What the schema says is exactly what the validators accept (the fuzz stage checks both ways),
# so strings are not stripped: " user_1" is refused, not silently read as "user_1".
ID_PATTERN = r"^[^\x00-\x20\x7f]+$"
TEXT_PATTERN = r"^[^\x00]*$"


# A space, a control character or DEL: one search in C (a generator over the characters was
# ~0.5% of an order's CPU, every id of every request).
_NOT_IN_IDS = re.compile(r"[\x00-\x20\x7f]")


def _id_chars(value: str) -> str:
    if _NOT_IN_IDS.search(value):
        raise ValueError("ids cannot contain spaces or control characters (such as NUL)")
    return value


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text; no backend should accept what another refuses.
    if "\x00" in value:
        raise ValueError("text cannot contain NUL characters")
    return value


Id = Annotated[
    str,
    Field(min_length=1, max_length=64, json_schema_extra={"pattern": ID_PATTERN}),
    AfterValidator(_id_chars),
]


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" is any number with no fractional part (2.0 included); strings
    # and booleans are not numbers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True), BeforeValidator(_whole_number)]
Text = Annotated[str, Field(json_schema_extra={"pattern": TEXT_PATTERN}), AfterValidator(_no_nul)]

# A client-chosen order id ends up in URLs (/orders/{id}, /saga/{id}): no '/', no spaces.
OrderId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Your own order id (letters, digits, '.', '_', ':', '-'); default: generated.",
    ),
]


def money(cents: int) -> Decimal:
    return from_cents(cents)


def instant(at: float) -> datetime:
    """A POSIX time from the saga log as an aware UTC datetime (ISO in JSON)."""
    return datetime.fromtimestamp(at, UTC)


def when(at: float | None) -> datetime | None:
    return None if at is None else instant(at)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """Every error response."""

    detail: str


# --------------------------------------------------------------------------- requests


class AddressIn(_Request):
    """A shipping address. ``state`` (seed 002's spelling) is another name for ``province``:
    give either, or both with the same value."""

    street: Text | None = Field(None, max_length=200)
    city: Text | None = Field(None, max_length=100)
    province: Text | None = Field(None, max_length=100)
    state: Text | None = Field(None, max_length=100, description="Same as `province`.")
    postal_code: Text | None = Field(None, max_length=32)
    country: Text | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _state_is_province(self) -> Self:
        if self.state is not None and self.province is not None and self.state != self.province:
            raise ValueError("state and province name the same thing: give one, or the same")
        return self

    def to_domain(self) -> Address:
        return Address(
            street=self.street,
            city=self.city,
            province=self.province if self.province is not None else self.state,
            postal_code=self.postal_code,
            country=self.country,
        )


class ItemIn(_Request):
    """A line. ``name`` and ``price`` (seed 002's request) are optional: the catalogue is
    authoritative, so a ``price`` other than the product's catalogue price is refused (422)
    and ``name`` is only informational."""

    product_id: Id
    quantity: Quantity
    name: Text | None = Field(None, max_length=200)
    price: Decimal | None = Field(None, ge=0, max_digits=14, decimal_places=2)


# The rules of OrderRequest._one_form, in the OpenAPI schema too: generated clients and the fuzz
# stage read them there. "null" also stands for "absent" (a property's schema applies only when
# the property is present).
_EXACTLY_ONE_CUSTOMER = {
    "oneOf": [
        {
            "title": "by customer_id",
            "required": ["customer_id"],
            "properties": {"customer_id": {"type": "string"}, "user_id": {"type": "null"}},
        },
        {
            "title": "by user_id",
            "required": ["user_id"],
            "properties": {"user_id": {"type": "string"}, "customer_id": {"type": "null"}},
        },
    ]
}
_ITEMS_OR_SHORT_FORM = {
    "oneOf": [
        {
            "title": "items",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "minItems": 1},
                "product_id": {"type": "null"},
                "quantity": {"type": "null"},
            },
        },
        {
            "title": "one item: product_id and quantity",
            "required": ["product_id", "quantity"],
            "properties": {
                "items": {"type": "null"},
                "product_id": {"type": "string"},
                "quantity": {"type": "integer"},
            },
        },
    ]
}


class OrderRequest(_Request):
    """``POST /orders`` and ``POST /checkout``. Give exactly one of customer_id or user_id
    (the same thing, two spellings), and either a non-empty ``items`` list or the one-item
    short form ``product_id`` + ``quantity``:

    * ``{"customer_id", "items": [{"product_id", "quantity"}], ...}``
    * ``{"user_id", "product_id", "quantity"}``.

    Optional: ``order_id`` (the client's own id: unique; repeating it with the same request
    returns that order, with another request is a 409), ``shipping_address`` (default: the
    account's), ``payment_method`` (``card``), ``amount`` (must equal the catalog total),
    ``checkout: false`` (a draft, no saga).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [_EXACTLY_ONE_CUSTOMER, _ITEMS_OR_SHORT_FORM],
            "examples": [
                {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2}]},
                {"user_id": "user_3", "product_id": "product_1", "quantity": 1},
            ],
        }
    )

    order_id: OrderId | None = None
    customer_id: Id | None = None
    user_id: Id | None = None
    items: list[ItemIn] | None = Field(None, max_length=MAX_ITEMS)
    product_id: Id | None = None
    quantity: Quantity | None = None
    shipping_address: AddressIn | None = None
    payment_method: Text = Field("card", min_length=1, max_length=32)
    amount: Decimal | None = Field(None, ge=0, max_digits=14, decimal_places=2)
    # Strict: "no" or 0 is not a boolean (lax parsing would read "no" as false: a draft).
    checkout: bool = Field(True, strict=True)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if (self.customer_id is None) == (self.user_id is None):
            raise ValueError("give exactly one of customer_id or user_id")
        short = self.product_id is not None or self.quantity is not None
        if short and self.items is not None:
            raise ValueError("give either items or product_id/quantity, not both")
        if short and (self.product_id is None or self.quantity is None):
            raise ValueError("the short form needs both product_id and quantity")
        if not short and not self.items:
            raise ValueError("an order needs at least one item")
        return self

    @property
    def customer(self) -> str:
        customer = self.customer_id or self.user_id
        assert customer is not None
        return customer

    def lines(self) -> list[OrderLine]:
        if self.items is None:
            assert self.product_id is not None
            assert self.quantity is not None
            return [OrderLine(product_id=self.product_id, quantity=self.quantity)]
        return [OrderLine(product_id=i.product_id, quantity=i.quantity) for i in self.items]

    @property
    def amount_cents(self) -> int | None:
        return None if self.amount is None else to_cents(self.amount)

    def client_prices(self) -> list[tuple[str, int]]:
        """``(product_id, price in cents)`` of every item that states a price."""
        return [(i.product_id, to_cents(i.price)) for i in self.items or () if i.price is not None]


# --------------------------------------------------------------------------- responses


class AddressOut(BaseModel):
    street: str | None
    city: str | None
    province: str | None
    postal_code: str | None
    country: str | None

    @classmethod
    def of(cls, address: Address | None) -> AddressOut | None:
        return None if address is None else cls(**address.model_dump())


class ItemOut(BaseModel):
    product_id: str
    quantity: int
    unit_price: Money
    line_total: Money

    @classmethod
    def of(cls, line: PricedLine) -> ItemOut:
        return cls(
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price=money(line.unit_price_cents),
            line_total=money(line.total_cents),
        )


class StepSummary(BaseModel):
    name: str
    status: str
    error: str | None = None


class ListedOrderStatus(StrEnum):
    """What ``GET /orders?status=`` filters on: a checkout order's status (``OrderStatus``) or
    a pay-later order's (``FlowOrderStatus``: ``pending_payment``, ``confirmed``...)."""

    PENDING = "pending"
    PROCESSING = "processing"
    FAILED = "failed"
    PENDING_PAYMENT = "pending_payment"
    CONFIRMED = "confirmed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class OrderSummary(BaseModel):
    """An order as ``GET /orders`` lists it: the order row, whose ``status`` follows its saga,
    without the saga's live view (one saga read per order; ``GET /orders/{id}`` has it).
    A pay-later order (``POST /orders/create_order``, ``kind: "pay_later"``) has its own
    statuses (``pending_payment`` -> ``confirmed`` -> ``completed``, or ``cancelled``), its
    ``payment_id``, and once delivered its ``courier``; ``error`` is why it was cancelled."""

    order_id: str
    customer_id: str
    status: OrderStatus | FlowOrderStatus
    kind: Literal["checkout", "pay_later"] = "checkout"
    payment_id: str | None = None
    courier: str | None = None
    saga_id: str | None
    total: Money
    error: str | None
    items: list[ItemOut]
    shipping_address: AddressOut | None
    payment_method: str
    created_at: datetime
    updated_at: datetime


class OrderOut(OrderSummary):
    """One order with its saga's status and steps."""

    saga_status: SagaStatus | None
    steps: list[StepSummary]


class PayLaterOrderOut(BaseModel):
    """A seed 004 (pay-later) order, with the timeline of its events or steps."""

    order_id: str
    customer_id: str
    items: list[dict[str, Any]]
    shipping_address: dict[str, Any] | None
    amount_cents: int
    status: str
    flow: str
    payment_id: str | None
    saga_id: str | None
    courier: str | None
    reason: str | None
    created_at: float  # seconds since the epoch
    updated_at: float
    saga_status: str | None
    timeline: list[dict[str, Any]]


class CheckoutFailed(BaseModel):
    """``POST /checkout/{order_id}`` when the checkout failed (400): why, and the order."""

    detail: str
    order: OrderOut


class OrderPage(BaseModel):
    orders: list[OrderSummary]
    limit: int
    offset: int


class StepOut(BaseModel):
    name: str
    phase: str
    status: str
    attempts: int
    error: str | None
    uncertain: bool = False
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    at: datetime
    type: str
    step: str | None = None
    phase: str | None = None
    attempt: int | None = None
    detail: str | None = None


class SagaSummary(BaseModel):
    saga_id: str
    name: str
    version: int
    status: SagaStatus
    order_id: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    # Pinned (`sagaway pin`): retention (SAGAWAY_RETENTION_DAYS) never removes it.
    pinned: bool = False


class SagaPage(BaseModel):
    sagas: list[SagaSummary]
    total: int
    limit: int
    offset: int


class SagaDetail(SagaSummary):
    owner: str | None
    lease_expires_at: datetime | None
    deadline_at: datetime | None
    cancel_requested: bool
    input: Any
    steps: list[StepOut]
    history: list[EventOut]


class SeedSagaStatus(BaseModel):
    """``GET /saga/{order_id}``, in the seed service's vocabulary; a participant that a finished
    saga never reached is ``SKIPPED``."""

    order_id: str
    saga_id: str | None
    status: str
    inventory_status: str
    payment_status: str
    shipping_status: str


class ProductOut(BaseModel):
    product_id: str
    name: str
    price: Money
    stock: int
    reserved: int
    shipped: int

    @classmethod
    def of(cls, product: ProductInfo) -> ProductOut:
        return cls(
            product_id=product.id,
            name=product.name,
            price=money(product.price_cents),
            stock=product.stock,
            reserved=product.reserved,
            shipped=product.shipped,
        )


class AccountOut(BaseModel):
    user_id: str
    name: str
    balance: Money
    shipping_address: AddressOut | None

    @classmethod
    def of(cls, account: AccountInfo) -> AccountOut:
        return cls(
            user_id=account.id,
            name=account.name,
            balance=money(account.balance_cents),
            shipping_address=AddressOut.of(account.shipping_address),
        )


class InventoryOut(BaseModel):
    inventory: dict[str, int]


class ProductsOut(BaseModel):
    products: list[ProductOut]


class BalancesOut(BaseModel):
    balances: dict[str, Money]


class AccountsOut(BaseModel):
    accounts: list[AccountOut]


class ResetRequest(_Request):
    """``POST /reset``: an empty object (or no body), sent as ``application/json``."""


class ResetOut(BaseModel):
    status: str
    inventory: dict[str, int]
    balances: dict[str, Money]


class HealthOut(BaseModel):
    status: str
    role: str
    owner_id: str
    executing: bool
    sagas_running: int
    demo: bool
