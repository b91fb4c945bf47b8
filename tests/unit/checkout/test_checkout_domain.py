"""Pure domain rules: money, pricing, addresses, couriers, demo data, error messages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from checkout.domain import (
    Address,
    CheckoutError,
    InsufficientFunds,
    InsufficientInventory,
    InvalidShippingAddress,
    OrderInput,
    OrderLine,
    PricedLine,
    ProductNotFound,
    UserNotFound,
    address_problems,
    assign_courier,
    demo,
    format_money,
    from_cents,
    merge_lines,
    order_total,
    price_lines,
    to_cents,
    validate_address,
)

GOOD = Address(street="1 Bay St", city="Toronto", province="ON", postal_code="M5J", country="CA")


# ----------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        (Decimal("50.00"), 5_000),
        (Decimal("0.01"), 1),
        ("19.9", 1_990),
        ("1000", 100_000),
        (12, 1_200),
        (Decimal("-3.25"), -325),
        (Decimal("1E+2"), 10_000),
    ],
)
def test_to_cents(amount: Decimal | str | int, cents: int) -> None:
    assert to_cents(amount) == cents


@pytest.mark.parametrize("amount", [0.1, 1.0, True])
def test_to_cents_refuses_floats_and_bools(amount: object) -> None:
    with pytest.raises(TypeError):
        to_cents(amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", ["0.001", "abc", "NaN", "Infinity", Decimal("1.005")])
def test_to_cents_refuses_sub_cent_and_non_numbers(amount: Decimal | str) -> None:
    with pytest.raises(ValueError, match="amount"):
        to_cents(amount)


def test_from_cents_has_two_places() -> None:
    assert from_cents(5_000) == Decimal("50.00")
    assert str(from_cents(5_000)) == "50.00"
    assert str(from_cents(1)) == "0.01"
    assert str(from_cents(-325)) == "-3.25"
    assert format_money(123_456) == "1234.56"
    with pytest.raises(TypeError):
        from_cents(True)


@pytest.mark.parametrize("cents", [0, 1, 99, 100, 12_345, 10**12])
def test_cents_round_trip(cents: int) -> None:
    assert to_cents(from_cents(cents)) == cents


# ----------------------------------------------------------------------------- pricing


def test_price_lines_and_total_from_the_catalog() -> None:
    prices = {p.id: p.price_cents for p in demo.DEMO_PRODUCTS}
    lines = price_lines(
        [
            OrderLine(product_id="product_1", quantity=2),
            OrderLine(product_id="product_3", quantity=1),
        ],
        prices,
    )
    assert lines == [
        PricedLine(product_id="product_1", quantity=2, unit_price_cents=5_000),
        PricedLine(product_id="product_3", quantity=1, unit_price_cents=10_000),
    ]
    assert lines[0].total_cents == 10_000
    assert order_total(lines) == 20_000
    assert order_total([]) == 0


def test_price_lines_rejects_unknown_products() -> None:
    with pytest.raises(ProductNotFound) as failure:
        price_lines([OrderLine(product_id="nope", quantity=1)], {"product_1": 5_000})
    assert failure.value.detail == "nope"


def test_merge_lines_sums_and_sorts() -> None:
    merged = merge_lines(
        [
            OrderLine(product_id="b", quantity=1),
            OrderLine(product_id="a", quantity=2),
            OrderLine(product_id="b", quantity=3),
        ]
    )
    assert merged == [OrderLine(product_id="a", quantity=2), OrderLine(product_id="b", quantity=4)]


@pytest.mark.parametrize("quantity", [0, -1])
def test_order_lines_need_a_positive_quantity(quantity: int) -> None:
    with pytest.raises(ValidationError):
        OrderLine(product_id="product_1", quantity=quantity)


def test_order_input_needs_items_and_no_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        OrderInput(order_id="o", customer_id="c", items=[])
    with pytest.raises(ValidationError):
        OrderInput.model_validate(
            {"order_id": "o", "customer_id": "c", "items": [], "amount": "1.00"}
        )
    order = OrderInput.model_validate(
        {"order_id": "o", "customer_id": "c", "items": [{"product_id": "p", "quantity": 1}]}
    )
    assert OrderInput.model_validate(order.model_dump(mode="json")) == order


# ----------------------------------------------------------------------------- addresses


def test_a_complete_address_is_valid() -> None:
    assert address_problems(GOOD) == []
    assert validate_address(GOOD) is GOOD
    assert validate_address(GOOD.model_copy(update={"province": None})) is not None


@pytest.mark.parametrize(
    "address",
    [
        None,
        GOOD.model_copy(update={"postal_code": "00000"}),
        GOOD.model_copy(update={"postal_code": " 00000 "}),
        GOOD.model_copy(update={"street": None}),
        GOOD.model_copy(update={"city": ""}),
        GOOD.model_copy(update={"postal_code": None}),
        GOOD.model_copy(update={"country": "   "}),
        Address(),
    ],
)
def test_undeliverable_addresses(address: Address | None) -> None:
    assert address_problems(address)
    with pytest.raises(InvalidShippingAddress) as failure:
        validate_address(address)
    assert str(failure.value) == "Invalid shipping address"


def test_couriers_by_city_then_province_then_default() -> None:
    def courier(**update: object) -> str:
        return assign_courier(
            GOOD.model_copy(update=update),
            demo.COURIERS_BY_CITY,
            demo.COURIERS_BY_PROVINCE,
            demo.DEFAULT_COURIER,
        )

    assert courier() == "Toronto Bike Couriers"
    assert courier(city=" toronto ", province="on") == "Toronto Bike Couriers"
    assert courier(city="Ottawa") == "Ontario Parcel"
    assert courier(city="Montreal", province="QC") == "Livraison Montreal"
    assert courier(city="Whitehorse", province="YT") == "Canada Post"


# ----------------------------------------------------------------------------- errors, demo


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (UserNotFound, "User not found"),
        (ProductNotFound, "Product not found"),
        (InsufficientInventory, "Insufficient inventory"),
        (InsufficientFunds, "Insufficient funds"),
        (InvalidShippingAddress, "Invalid shipping address"),
    ],
)
def test_business_error_messages_are_exact(error: type[CheckoutError], message: str) -> None:
    raised = error("some detail for the logs")
    assert str(raised) == message
    assert raised.message == message
    assert raised.args == (message,)
    assert isinstance(raised, CheckoutError)


def test_demo_data_matches_the_design() -> None:
    products = {p.id: (p.stock, from_cents(p.price_cents)) for p in demo.DEMO_PRODUCTS}
    assert products == {
        "product_1": (100, Decimal("50.00")),
        "product_2": (50, Decimal("20.00")),
        "product_3": (25, Decimal("100.00")),
    }
    balances = {a.id: from_cents(a.balance_cents) for a in demo.DEMO_ACCOUNTS}
    assert balances == {
        "user_1": Decimal("1000.00"),
        "user_2": Decimal("500.00"),
        "user_3": Decimal("200.00"),
    }
    deliverable = {a.id: not address_problems(a.address) for a in demo.DEMO_ACCOUNTS}
    assert deliverable == {"user_1": True, "user_2": True, "user_3": False}
    assert demo.demo_total_money_cents() == 170_000
    assert demo.demo_total_units() == {"product_1": 100, "product_2": 50, "product_3": 25}
