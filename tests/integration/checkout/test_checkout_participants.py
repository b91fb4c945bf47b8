"""Participants against a real database (SQLite file and PostgreSQL): idempotent actions,
exactly-once compensations, tombstones, and the money/stock invariants."""

from __future__ import annotations

import pytest

from checkout.dbexec import ShopExecutor
from checkout.domain import (
    Address,
    InsufficientFunds,
    InsufficientInventory,
    InvalidShippingAddress,
    OrderLine,
    PaymentStatus,
    ProductNotFound,
    ReservationStatus,
    ShipmentStatus,
    UserNotFound,
)
from checkout.domain.demo import demo_total_money_cents, demo_total_units
from checkout.participants import CheckoutParticipants
from sagaway.store.sqlite import SQLiteStore

ONE_P1 = [OrderLine(product_id="product_1", quantity=1)]
TORONTO = Address(
    street="1 Bay St", city="Toronto", province="ON", postal_code="M5J 2R8", country="CA"
)


async def assert_invariants(shop: CheckoutParticipants) -> None:
    totals = await shop.shop.totals()
    assert totals.money_cents == demo_total_money_cents()
    assert totals.units == demo_total_units()


async def product(shop: CheckoutParticipants, product_id: str) -> tuple[int, int, int]:
    info = await shop.shop.get_product(product_id)
    assert info is not None
    return info.stock, info.reserved, info.shipped


# ----------------------------------------------------------------------------- demo data


async def test_demo_data_loads_once_and_resets(shop: CheckoutParticipants) -> None:
    assert await shop.shop.load_demo_data() is False  # already loaded by the fixture
    assert await shop.shop.inventory() == {"product_1": 100, "product_2": 50, "product_3": 25}
    assert await shop.shop.balances() == {"user_1": 100_000, "user_2": 50_000, "user_3": 20_000}
    await shop.inventory.reserve("k1", "o1", [OrderLine(product_id="product_2", quantity=5)])
    await shop.payment.charge("k2", "o1", "user_2", 123)
    await shop.orders.create_order("user_2", ONE_P1)
    await shop.shop.reset_demo_data()
    assert await shop.shop.inventory() == {"product_1": 100, "product_2": 50, "product_3": 25}
    assert await shop.shop.balances() == {"user_1": 100_000, "user_2": 50_000, "user_3": 20_000}
    assert await shop.orders.list_orders() == []
    assert await shop.inventory.get("k1") is None
    user_3 = await shop.shop.get_account("user_3")
    assert user_3 is not None
    assert user_3.shipping_address is not None
    assert user_3.shipping_address.postal_code == "00000"
    await assert_invariants(shop)


# ----------------------------------------------------------------------------- inventory


async def test_reserve_is_idempotent(shop: CheckoutParticipants) -> None:
    lines = [OrderLine(product_id="product_1", quantity=3)]
    first = await shop.inventory.reserve("s1:reserve_inventory:forward", "o1", lines)
    again = await shop.inventory.reserve("s1:reserve_inventory:forward", "o1", lines)
    assert first == again
    assert first.status is ReservationStatus.RESERVED
    assert await product(shop, "product_1") == (97, 3, 0)
    await assert_invariants(shop)


async def test_reserve_is_all_or_nothing(shop: CheckoutParticipants) -> None:
    lines = [
        OrderLine(product_id="product_1", quantity=2),
        OrderLine(product_id="product_2", quantity=51),
    ]
    with pytest.raises(InsufficientInventory) as failure:
        await shop.inventory.reserve("k", "o1", lines)
    assert str(failure.value) == "Insufficient inventory"
    assert await product(shop, "product_1") == (100, 0, 0)
    assert await shop.inventory.get("k") is None  # a failure records nothing
    with pytest.raises(ProductNotFound, match=r"^Product not found$"):
        await shop.inventory.reserve("k", "o1", [OrderLine(product_id="nope", quantity=1)])


async def test_reserve_merges_duplicate_lines(shop: CheckoutParticipants) -> None:
    lines = [OrderLine(product_id="product_3", quantity=20)] * 2
    with pytest.raises(InsufficientInventory):
        await shop.inventory.reserve("k", "o1", lines)
    assert await product(shop, "product_3") == (25, 0, 0)


async def test_release_is_exactly_once(shop: CheckoutParticipants) -> None:
    await shop.inventory.reserve("fwd", "o1", [OrderLine(product_id="product_2", quantity=4)])
    released = await shop.inventory.release("fwd", "comp", order_id="o1")
    assert released.status is ReservationStatus.RELEASED
    assert released.compensation_key == "comp"
    again = await shop.inventory.release("fwd", "comp", order_id="o1")
    assert again == released
    assert await product(shop, "product_2") == (50, 0, 0)
    await assert_invariants(shop)


async def test_release_before_reserve_leaves_a_tombstone(shop: CheckoutParticipants) -> None:
    tombstone = await shop.inventory.release("fwd", "comp", order_id="o1")
    assert tombstone.status is ReservationStatus.CANCELLED
    late = await shop.inventory.reserve(
        "fwd", "o1", [OrderLine(product_id="product_1", quantity=5)]
    )
    assert late.status is ReservationStatus.CANCELLED
    assert await product(shop, "product_1") == (100, 0, 0)
    await assert_invariants(shop)


# ----------------------------------------------------------------------------- payment


async def test_charge_is_idempotent(shop: CheckoutParticipants) -> None:
    first = await shop.payment.charge("pay", "o1", "user_1", 10_000)
    again = await shop.payment.charge("pay", "o1", "user_1", 10_000)
    assert first == again
    assert first.status is PaymentStatus.CAPTURED
    assert (await shop.shop.balances())["user_1"] == 90_000
    await assert_invariants(shop)


async def test_charge_business_failures(shop: CheckoutParticipants) -> None:
    with pytest.raises(InsufficientFunds, match=r"^Insufficient funds$"):
        await shop.payment.charge("pay", "o1", "user_3", 20_001)
    with pytest.raises(UserNotFound, match=r"^User not found$"):
        await shop.payment.charge("pay", "o1", "ghost", 1)
    assert await shop.payment.get("pay") is None
    assert (await shop.shop.balances())["user_3"] == 20_000
    # The exact balance is enough: the guard is >=, not >.
    await shop.payment.charge("pay", "o1", "user_3", 20_000)
    assert (await shop.shop.balances())["user_3"] == 0
    await assert_invariants(shop)


async def test_business_failures_in_the_group_commit_need_no_savepoint(
    shop: CheckoutParticipants, executor: ShopExecutor
) -> None:
    """In the saga store's group commit (``sqlite-log``) a participant looks its key up first
    and claims it after the effect, so a business failure raises before any write: the store
    runs it without a savepoint and never replays the batch for it (which would redo every
    write of the batch)."""
    store = getattr(executor, "_store", None)
    if not isinstance(store, SQLiteStore):
        pytest.skip("the saga store's group commit only")
    assert store._writer_conn is not None
    statements: list[str] = []
    store._writer_conn.set_trace_callback(statements.append)
    try:
        with pytest.raises(InsufficientInventory):
            await shop.inventory.reserve(
                "r", "o1", [OrderLine(product_id="product_3", quantity=26)]
            )
        with pytest.raises(InsufficientFunds):
            await shop.payment.charge("pay", "o1", "user_3", 20_001)
        with pytest.raises(InvalidShippingAddress):
            await shop.shipping.create_shipment("ship", "o1", None, ONE_P1)
    finally:
        store._writer_conn.set_trace_callback(None)
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    assert not [s for s in statements if s.lstrip().upper().startswith(("INSERT", "DELETE"))]
    await assert_invariants(shop)


async def test_in_the_group_commit_the_claim_lookup_rides_the_first_write(
    shop: CheckoutParticipants, executor: ShopExecutor
) -> None:
    """On the saga store's writer an action reads no ledger row of its own before writing:
    whether its key is claimed is checked by its first write (``NOT EXISTS``), and looked
    up only when that write changed nothing. Repeats and tombstones still apply nothing."""
    store = getattr(executor, "_store", None)
    if not isinstance(store, SQLiteStore):
        pytest.skip("the saga store's group commit only")
    assert store._writer_conn is not None
    two_lines = [
        OrderLine(product_id="product_1", quantity=2),
        OrderLine(product_id="product_2", quantity=1),
    ]
    # Another order first: a product's first shipment ever adds its shipped_units row.
    await shop.inventory.reserve("warm-res", "o0", two_lines)
    await shop.shipping.create_shipment("warm-ship", "o0", TORONTO, two_lines)
    statements: list[str] = []
    store._writer_conn.set_trace_callback(statements.append)
    try:
        reservation = await shop.inventory.reserve("res", "o1", two_lines)
        payment = await shop.payment.charge("pay", "o1", "user_1", 1_000)
        shipment = await shop.shipping.create_shipment("ship", "o1", TORONTO, two_lines)
        first_calls = list(statements)
        # Repeats: the first write changes nothing, the recorded row is returned.
        assert await shop.inventory.reserve("res", "o1", two_lines) == reservation
        assert await shop.payment.charge("pay", "o1", "user_1", 1_000) == payment
        assert await shop.shipping.create_shipment("ship", "o1", TORONTO, two_lines) == shipment
    finally:
        store._writer_conn.set_trace_callback(None)
    reads = [s for s in first_calls if s.lstrip().upper().startswith("SELECT")]
    assert not reads, reads
    assert await product(shop, "product_1") == (96, 0, 4)
    assert await product(shop, "product_2") == (48, 0, 2)
    assert (await shop.shop.balances())["user_1"] == 100_000 - 1_000
    await assert_invariants(shop)


async def test_refund_is_exactly_once(shop: CheckoutParticipants) -> None:
    await shop.payment.charge("pay", "o1", "user_2", 2_500)
    refunded = await shop.payment.refund("pay", "refund", order_id="o1", account_id="user_2")
    assert refunded.status is PaymentStatus.REFUNDED
    assert await shop.payment.refund("pay", "refund") == refunded
    assert await shop.payment.refund("pay", "another-key") == refunded
    assert (await shop.shop.balances())["user_2"] == 50_000
    await assert_invariants(shop)


async def test_refund_before_charge_voids_the_late_charge(shop: CheckoutParticipants) -> None:
    void = await shop.payment.refund("pay", "refund", order_id="o1", account_id="user_1")
    assert void.status is PaymentStatus.VOID
    late = await shop.payment.charge("pay", "o1", "user_1", 5_000)
    assert late.status is PaymentStatus.VOID
    assert (await shop.shop.balances())["user_1"] == 100_000
    await assert_invariants(shop)


# ----------------------------------------------------------------------------- shipping


async def reserved_p1(shop: CheckoutParticipants, quantity: int = 2) -> list[OrderLine]:
    lines = [OrderLine(product_id="product_1", quantity=quantity)]
    await shop.inventory.reserve("res", "o1", lines)
    return lines


async def test_shipment_is_idempotent_and_moves_reserved_units(
    shop: CheckoutParticipants,
) -> None:
    lines = await reserved_p1(shop)
    first = await shop.shipping.create_shipment("ship", "o1", TORONTO, lines)
    again = await shop.shipping.create_shipment("ship", "o1", TORONTO, lines)
    assert first == again
    assert first.status is ShipmentStatus.CREATED
    assert first.courier == "Toronto Bike Couriers"
    assert await product(shop, "product_1") == (98, 0, 2)
    await assert_invariants(shop)


@pytest.mark.parametrize(
    "address",
    [
        None,
        TORONTO.model_copy(update={"postal_code": "00000"}),
        TORONTO.model_copy(update={"street": None}),
        TORONTO.model_copy(update={"city": "  "}),
        TORONTO.model_copy(update={"country": None}),
    ],
)
async def test_undeliverable_address_fails_and_records_nothing(
    shop: CheckoutParticipants, address: Address | None
) -> None:
    lines = await reserved_p1(shop)
    with pytest.raises(InvalidShippingAddress, match=r"^Invalid shipping address$"):
        await shop.shipping.create_shipment("ship", "o1", address, lines)
    assert await shop.shipping.get("ship") is None
    assert await product(shop, "product_1") == (98, 2, 0)


async def test_cancel_shipment_is_exactly_once(shop: CheckoutParticipants) -> None:
    lines = await reserved_p1(shop, 3)
    await shop.shipping.create_shipment("ship", "o1", TORONTO, lines)
    cancelled = await shop.shipping.cancel_shipment("ship", "cancel", order_id="o1")
    assert cancelled.status is ShipmentStatus.CANCELLED
    assert await shop.shipping.cancel_shipment("ship", "cancel") == cancelled
    assert await product(shop, "product_1") == (97, 3, 0)  # back to reserved...
    await shop.inventory.release("res", "release")
    assert await product(shop, "product_1") == (100, 0, 0)  # ...then to stock
    await assert_invariants(shop)


async def test_a_late_shipment_to_a_bad_address_finds_its_tombstone(
    shop: CheckoutParticipants,
) -> None:
    """Cancelled before it ran, a shipment whose address is undeliverable is void, as any
    late one: the tombstone is found before the address is judged."""
    void = await shop.shipping.cancel_shipment("ship", "cancel", order_id="o1")
    late = await shop.shipping.create_shipment("ship", "o1", None, ONE_P1)
    assert late == void
    assert late.status is ShipmentStatus.VOID
    with pytest.raises(InvalidShippingAddress):  # another key: judged, and refused
        await shop.shipping.create_shipment("ship-2", "o1", None, ONE_P1)
    await assert_invariants(shop)


async def test_cancel_before_create_voids_the_late_shipment(shop: CheckoutParticipants) -> None:
    lines = await reserved_p1(shop)
    void = await shop.shipping.cancel_shipment("ship", "cancel", order_id="o1")
    assert void.status is ShipmentStatus.VOID
    late = await shop.shipping.create_shipment("ship", "o1", TORONTO, lines)
    assert late.status is ShipmentStatus.VOID
    assert await product(shop, "product_1") == (98, 2, 0)
    await assert_invariants(shop)
