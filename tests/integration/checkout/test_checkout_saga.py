"""The checkout saga end to end on the sagaway engine (in-memory saga log) over a real shop
database: the four classic scenarios with exact balance and stock deltas, and the invariants."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from checkout.domain import Address, OrderLine, OrderStatus
from checkout.domain.demo import demo_total_money_cents, demo_total_units
from checkout.participants import CheckoutParticipants, saga_input
from checkout.sagas import STEP_NAMES, build_checkout_saga
from sagaway import Engine, Phase, Saga, SagaRecord, SagaStatus, StepStatus


@pytest.fixture
async def engine(shop: CheckoutParticipants) -> AsyncIterator[tuple[Engine, Saga]]:
    saga = build_checkout_saga(shop)
    async with Engine("memory://", sagas=[saga]) as running:
        yield running, saga


async def checkout(
    shop: CheckoutParticipants,
    engine: tuple[Engine, Saga],
    customer_id: str,
    items: list[OrderLine],
    address: Address | None = None,
) -> SagaRecord:
    """What the API will do: record the order, run its saga, mirror the outcome."""
    running, saga = engine
    order, _ = await shop.orders.create_order(customer_id, items, shipping_address=address)
    saga_id = await running.start(saga, saga_input(order), idempotency_key=order.id)
    assert await shop.orders.attach_saga(order.id, saga_id)
    record = await running.wait(saga_id, timeout=30)
    assert record.status.is_terminal
    error = next((s.error for s in record.steps.values() if s.error), None)
    succeeded = record.status is SagaStatus.SUCCEEDED
    await shop.orders.update_status(
        order.id,
        OrderStatus.COMPLETED if succeeded else OrderStatus.FAILED,
        error=None if succeeded else error,
    )
    return record


def forward(record: SagaRecord, step: str) -> StepStatus | None:
    row = record.step(step, Phase.FORWARD)
    return None if row is None else row.status


def compensated(record: SagaRecord) -> set[str]:
    """Steps whose compensation finished (the library marks those rows COMPENSATED)."""
    done = {StepStatus.COMPENSATED, StepStatus.SUCCEEDED}
    return {
        name
        for (name, phase), row in record.steps.items()
        if phase is Phase.COMPENSATION and row.status in done
    }


async def assert_invariants(shop: CheckoutParticipants) -> None:
    totals = await shop.shop.totals()
    assert totals.money_cents == demo_total_money_cents()
    assert totals.units == demo_total_units()


def test_steps_are_declared_in_order(shop: CheckoutParticipants) -> None:
    saga = build_checkout_saga(shop)
    assert (saga.name, saga.version) == ("checkout", 1)
    assert tuple(step.name for step in saga.steps) == STEP_NAMES
    assert [step.undo is not None for step in saga.steps] == [False, True, True, True]


async def test_happy_path(shop: CheckoutParticipants, engine: tuple[Engine, Saga]) -> None:
    record = await checkout(shop, engine, "user_1", [OrderLine(product_id="product_1", quantity=2)])
    assert record.status is SagaStatus.SUCCEEDED
    assert all(forward(record, name) is StepStatus.SUCCEEDED for name in STEP_NAMES)
    assert (await shop.shop.balances())["user_1"] == 100_000 - 10_000
    p1 = await shop.shop.get_product("product_1")
    assert p1 is not None
    assert (p1.stock, p1.reserved, p1.shipped) == (98, 0, 2)
    orders = await shop.orders.list_orders()
    assert [o.status for o in orders] == [OrderStatus.COMPLETED]
    await assert_invariants(shop)


async def test_out_of_stock_fails_at_inventory(
    shop: CheckoutParticipants, engine: tuple[Engine, Saga]
) -> None:
    record = await checkout(
        shop, engine, "user_1", [OrderLine(product_id="product_1", quantity=200)]
    )
    assert record.status is SagaStatus.COMPENSATED
    assert forward(record, "reserve_inventory") is StepStatus.FAILED
    step = record.step("reserve_inventory")
    assert step is not None
    assert step.error == "Insufficient inventory"
    assert forward(record, "process_payment") is None
    assert await shop.shop.balances() == {"user_1": 100_000, "user_2": 50_000, "user_3": 20_000}
    assert (await shop.shop.inventory())["product_1"] == 100
    (order,) = await shop.orders.list_orders()
    assert order.status is OrderStatus.FAILED
    assert order.error == "Insufficient inventory"
    await assert_invariants(shop)


async def test_insufficient_funds_releases_inventory(
    shop: CheckoutParticipants, engine: tuple[Engine, Saga]
) -> None:
    record = await checkout(
        shop, engine, "user_3", [OrderLine(product_id="product_1", quantity=10)]
    )
    assert record.status is SagaStatus.COMPENSATED
    step = record.step("process_payment")
    assert step is not None
    assert step.error == "Insufficient funds"
    assert "reserve_inventory" in compensated(record)
    assert (await shop.shop.balances())["user_3"] == 20_000
    assert (await shop.shop.inventory())["product_1"] == 100
    await assert_invariants(shop)


async def test_bad_address_refunds_and_releases(
    shop: CheckoutParticipants, engine: tuple[Engine, Saga]
) -> None:
    record = await checkout(shop, engine, "user_3", [OrderLine(product_id="product_1", quantity=1)])
    assert record.status is SagaStatus.COMPENSATED
    step = record.step("ship_order")
    assert step is not None
    assert step.error == "Invalid shipping address"
    assert {"reserve_inventory", "process_payment"} <= compensated(record)
    assert (await shop.shop.balances())["user_3"] == 20_000
    assert (await shop.shop.inventory())["product_1"] == 100
    await assert_invariants(shop)


@pytest.mark.parametrize(
    ("customer", "product", "message"),
    [("ghost", "product_1", "User not found"), ("user_1", "nope", "Product not found")],
)
async def test_unknown_ids_fail_validation(
    shop: CheckoutParticipants,
    engine: tuple[Engine, Saga],
    customer: str,
    product: str,
    message: str,
) -> None:
    record = await checkout(shop, engine, customer, [OrderLine(product_id=product, quantity=1)])
    assert record.status is SagaStatus.COMPENSATED
    step = record.step("validate_order")
    assert step is not None
    assert step.error == message
    await assert_invariants(shop)


async def test_explicit_address_overrides_the_accounts(
    shop: CheckoutParticipants, engine: tuple[Engine, Saga]
) -> None:
    good = Address(
        street="1 Main St", city="Calgary", province="AB", postal_code="T2P 1J9", country="CA"
    )
    record = await checkout(
        shop, engine, "user_3", [OrderLine(product_id="product_2", quantity=1)], good
    )
    assert record.status is SagaStatus.SUCCEEDED
    shipment = await shop.shipping.get(f"{record.id}:ship_order:forward")
    assert shipment is not None
    assert shipment.courier == "Prairie Post"
