"""Concurrent calls never oversell, overdraw or apply a key twice, on SQLite and PostgreSQL.

No sleeps and no timing: tasks are started together with ``asyncio.gather`` and only the
final state is asserted, which must hold under every interleaving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from checkout.db import AccountRow, Database, migrate, open_database
from checkout.domain import (
    InsufficientFunds,
    InsufficientInventory,
    OrderLine,
    ReservationStatus,
)
from checkout.domain.demo import demo_total_money_cents, demo_total_units
from checkout.participants import CheckoutParticipants, saga_input
from checkout.sagas import build_checkout_saga
from sagaway import Engine, SagaStatus

ONE_P3 = [OrderLine(product_id="product_3", quantity=1)]
TORONTO = {
    "ship_street": "1 Bay St",
    "ship_city": "Toronto",
    "ship_province": "ON",
    "ship_postal_code": "M5J 2R8",
    "ship_country": "CA",
}


async def assert_invariants(shop: CheckoutParticipants) -> None:
    totals = await shop.shop.totals()
    assert totals.money_cents == demo_total_money_cents()
    assert totals.units == demo_total_units()


async def test_concurrent_reservations_never_oversell(shop: CheckoutParticipants) -> None:
    async def reserve(n: int) -> bool:
        try:
            await shop.inventory.reserve(f"saga{n}:reserve_inventory:forward", f"o{n}", ONE_P3)
        except InsufficientInventory:
            return False
        return True

    outcomes = await asyncio.gather(*(reserve(n) for n in range(60)))
    assert outcomes.count(True) == 25
    p3 = await shop.shop.get_product("product_3")
    assert p3 is not None
    assert (p3.stock, p3.reserved) == (0, 25)
    await assert_invariants(shop)


async def test_concurrent_repeats_of_one_key_apply_once(shop: CheckoutParticipants) -> None:
    lines = [OrderLine(product_id="product_2", quantity=2)]
    results = await asyncio.gather(*(shop.inventory.reserve("k", "o1", lines) for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert (await shop.shop.inventory())["product_2"] == 48
    payments = await asyncio.gather(
        *(shop.payment.charge("p", "o1", "user_2", 4_000) for _ in range(20))
    )
    assert all(p == payments[0] for p in payments)
    assert (await shop.shop.balances())["user_2"] == 46_000
    refunds = await asyncio.gather(*(shop.payment.refund("p", f"r{n}") for n in range(20)))
    assert len({r.status for r in refunds}) == 1
    assert (await shop.shop.balances())["user_2"] == 50_000
    await assert_invariants(shop)


async def test_concurrent_charges_never_overdraw(shop: CheckoutParticipants) -> None:
    async def charge(n: int) -> bool:
        try:
            await shop.payment.charge(f"pay{n}", f"o{n}", "user_3", 1_000)
        except InsufficientFunds:
            return False
        return True

    outcomes = await asyncio.gather(*(charge(n) for n in range(30)))
    assert outcomes.count(True) == 20
    assert (await shop.shop.balances())["user_3"] == 0
    await assert_invariants(shop)


async def test_release_racing_its_reservation_settles_cleanly(shop: CheckoutParticipants) -> None:
    """Whichever of the action and its compensation lands first, the units end in stock."""

    async def race(n: int) -> None:
        key = f"saga{n}:reserve_inventory:forward"
        await asyncio.gather(
            shop.inventory.reserve(key, f"o{n}", ONE_P3),
            shop.inventory.release(key, f"saga{n}:reserve_inventory:compensation"),
        )
        final = await shop.inventory.get(key)
        assert final is not None
        assert final.status in {ReservationStatus.RELEASED, ReservationStatus.CANCELLED}

    await asyncio.gather(*(race(n) for n in range(20)))
    p3 = await shop.shop.get_product("product_3")
    assert p3 is not None
    assert (p3.stock, p3.reserved) == (25, 0)
    await assert_invariants(shop)


async def test_two_engines_on_one_sqlite_file(tmp_path: Path) -> None:
    """Two connection pools on one file (as the shop and the saga log, or two processes):
    BEGIN IMMEDIATE makes writers queue instead of failing with "database is locked"."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = open_database(url), open_database(url)
    try:
        await migrate(first)
        await migrate(second)  # a second migrator finds the schema at head
        shops = [CheckoutParticipants.from_database(db) for db in (first, second)]
        await shops[0].shop.load_demo_data()

        async def reserve(n: int) -> bool:
            try:
                await shops[n % 2].inventory.reserve(f"k{n}", f"o{n}", ONE_P3)
            except InsufficientInventory:
                return False
            return True

        outcomes = await asyncio.gather(*(reserve(n) for n in range(50)))
        assert outcomes.count(True) == 25
        await assert_invariants(shops[1])
    finally:
        await first.dispose()
        await second.dispose()


async def test_concurrent_checkouts_sell_exactly_the_stock(
    db: Database, shop: CheckoutParticipants
) -> None:
    """60 sagas buy one of the 25 keyboards: exactly 25 complete, the rest fail at inventory
    and leave nothing behind. The buyer can afford them all, so only stock decides."""
    async with db.sessions.begin() as session:
        session.add(
            AccountRow(id="whale", name="Deep Pockets", balance_cents=10_000_000, **TORONTO)
        )
    saga = build_checkout_saga(shop)
    async with Engine("memory://", sagas=[saga]) as engine:

        async def order(n: int) -> str:
            placed, _ = await shop.orders.create_order("whale", ONE_P3)
            return await engine.start(saga, saga_input(placed))

        saga_ids = await asyncio.gather(*(order(n) for n in range(60)))
        records = await asyncio.gather(*(engine.wait(sid, timeout=60) for sid in saga_ids))
    statuses = [r.status for r in records]
    assert statuses.count(SagaStatus.SUCCEEDED) == 25
    assert statuses.count(SagaStatus.COMPENSATED) == 35
    errors = {step.error for r in records for step in r.steps.values() if step.error is not None}
    assert errors == {"Insufficient inventory"}
    p3 = await shop.shop.get_product("product_3")
    assert p3 is not None
    assert (p3.stock, p3.reserved, p3.shipped) == (0, 0, 25)
    balances = await shop.shop.balances()
    assert balances["whale"] == 10_000_000 - 25 * 10_000
    totals = await shop.shop.totals()
    assert totals.money_cents == demo_total_money_cents() + 10_000_000
    assert totals.units == demo_total_units()
