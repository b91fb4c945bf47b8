"""Orders and the schema itself: migrations match the models on both backends, and orders are
priced from the catalog, deduplicated by idempotency key, listed newest first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update
from sqlalchemy.engine import Connection

from checkout.db import (
    EMBEDDED,
    VERSION_TABLE,
    Base,
    Database,
    ProductRow,
    apply_migrations,
    downgrade,
    migrate,
)
from checkout.dbexec import ShopExecutor
from checkout.domain import Address, OrderLine, OrderStatus, ProductNotFound, UserNotFound
from checkout.participants import CheckoutParticipants, saga_input
from checkout.participants.shop import validate_order

TABLES = {
    "products",
    "accounts",
    "orders",
    "order_items",
    "payments",
    "inventory_reservations",
    "shipments",
    "shipped_units",
    "payment_inbox",
    "inventory_inbox",
    "shipping_inbox",
    # seed 004's pay-later services: order (gateway), payment, delivery (shipping)
    *(f"flow_{t}" for t in ("orders", "order_inbox", "order_outbox")),
    *(f"flow_{t}" for t in ("payments", "payment_inbox", "payment_outbox")),
    *(f"flow_{t}" for t in ("deliveries", "delivery_inbox", "delivery_outbox")),
}
VERSION_TABLES = {history.version_table for history in EMBEDDED}


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "version_table": VERSION_TABLE,
            "include_name": lambda name, kind, _: kind != "table" or name not in VERSION_TABLES,
        },
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrations_match_the_models(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        assert await conn.run_sync(_tables) == TABLES | VERSION_TABLES


async def test_migrations_downgrade_and_reapply(db: Database) -> None:
    await migrate(db)  # already at head: a no-op
    await downgrade(db, "base")
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_tables) == VERSION_TABLES
    await migrate(db)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


def test_apply_migrations_from_sync_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    apply_migrations(url)
    apply_migrations(url)  # idempotent

    async def check() -> None:
        from checkout.db import open_database

        database = open_database(url)
        try:
            shop = CheckoutParticipants.from_database(database)
            assert await shop.shop.load_demo_data() is True
            assert await shop.shop.load_demo_data() is False
        finally:
            await database.dispose()

    asyncio.run(check())


async def test_create_order_prices_from_the_catalog(shop: CheckoutParticipants) -> None:
    items = [
        OrderLine(product_id="product_1", quantity=2),
        OrderLine(product_id="product_2", quantity=3),
    ]
    order, created = await shop.orders.create_order("user_1", items)
    assert created
    assert order.status is OrderStatus.PENDING
    assert order.total_cents == 2 * 5_000 + 3 * 2_000
    assert [(i.product_id, i.quantity, i.unit_price_cents) for i in order.items] == [
        ("product_1", 2, 5_000),
        ("product_2", 3, 2_000),
    ]
    assert order.shipping_address is not None
    assert order.shipping_address.city == "Toronto"  # the account's default
    assert order.created_at.tzinfo is not None
    assert await shop.orders.get_order(order.id) == order
    assert saga_input(order).items == items


def _reprice(conn: Connection, product_id: str, cents: int) -> None:
    conn.execute(update(ProductRow).where(ProductRow.id == product_id).values(price_cents=cents))


async def test_a_checked_out_order_hands_its_validation_to_its_saga(
    shop: CheckoutParticipants, executor: ShopExecutor
) -> None:
    """An order recorded for checkout leaves ``validate_order``'s outcome, worked out from
    the account and prices read where the order was recorded, to its saga's first step: what
    that step reads at that moment, taken once, and only for the input it was made for."""
    items = [
        OrderLine(product_id="product_2", quantity=2),
        OrderLine(product_id="product_1", quantity=1),
    ]
    order, _ = await shop.orders.create_order("user_1", items, checkout=True)
    read_now = await executor.read(validate_order, saga_input(order))
    await executor.write(_reprice, "product_2", 2_500)  # after the order was priced
    handed = await shop.shop.validate_order(saga_input(order))
    assert handed == read_now
    assert handed.total_cents == order.total_cents == 2 * 2_000 + 5_000
    again = await shop.shop.validate_order(saga_input(order))  # taken: read afresh
    assert again.total_cents == 2 * 2_500 + 5_000
    # Only for that very input: another one reads (and the outcome is gone all the same).
    other, _ = await shop.orders.create_order("user_1", items, checkout=True)
    elsewhere = saga_input(other).model_copy(update={"customer_id": "user_2"})
    assert (await shop.shop.validate_order(elsewhere)).customer_id == "user_2"
    assert (await shop.shop.validate_order(saga_input(other))).total_cents == 2 * 2_500 + 5_000
    # Nothing is handed over for a draft, nor for what the step must refuse in its own words.
    draft, _ = await shop.orders.create_order("user_1", items)
    await executor.write(_reprice, "product_2", 3_000)
    assert (await shop.shop.validate_order(saga_input(draft))).total_cents == 2 * 3_000 + 5_000
    ghost, _ = await shop.orders.create_order("ghost", items, checkout=True)
    with pytest.raises(UserNotFound):
        await shop.shop.validate_order(saga_input(ghost))


async def test_create_order_is_idempotent_on_its_key(shop: CheckoutParticipants) -> None:
    items = [OrderLine(product_id="product_1", quantity=1)]
    results = await asyncio.gather(
        *(shop.orders.create_order("user_1", items, idempotency_key="abc") for _ in range(10))
    )
    assert sum(created for _, created in results) == 1
    assert len({order.id for order, _ in results}) == 1
    assert len(await shop.orders.list_orders()) == 1


async def test_unknown_ids_are_recorded_unless_strict(shop: CheckoutParticipants) -> None:
    lenient, _ = await shop.orders.create_order("ghost", [OrderLine(product_id="nope", quantity=1)])
    assert lenient.total_cents == 0
    assert lenient.shipping_address is None
    with pytest.raises(UserNotFound):
        await shop.orders.create_order(
            "ghost", [OrderLine(product_id="product_1", quantity=1)], strict=True
        )
    with pytest.raises(ProductNotFound):
        await shop.orders.create_order(
            "user_1", [OrderLine(product_id="nope", quantity=1)], strict=True
        )


async def test_explicit_address_is_kept(shop: CheckoutParticipants) -> None:
    address = Address(street="9 Rue X", city="Quebec", postal_code="G1R 4P5", country="CA")
    order, _ = await shop.orders.create_order(
        "user_2", [OrderLine(product_id="product_2", quantity=1)], shipping_address=address
    )
    assert order.shipping_address == address


async def test_list_update_and_attach(shop: CheckoutParticipants) -> None:
    items = [OrderLine(product_id="product_2", quantity=1)]
    await shop.orders.create_order("user_1", items, order_id="o-1")
    await shop.orders.create_order("user_2", items, order_id="o-2")
    assert [o.id for o in await shop.orders.list_orders()] == ["o-2", "o-1"]
    assert [o.id for o in await shop.orders.list_orders(limit=1, offset=1)] == ["o-1"]

    attached = await asyncio.gather(*(shop.orders.attach_saga("o-1", f"s{n}") for n in range(5)))
    assert attached.count(True) == 1
    order = await shop.orders.get_order("o-1")
    assert order is not None
    assert order.status is OrderStatus.PROCESSING
    assert order.saga_id is not None
    assert (await shop.orders.get_by_saga(order.saga_id)) == order

    failed = await shop.orders.update_status("o-2", "failed", error="Insufficient funds")
    assert failed is not None
    assert (failed.status, failed.error) == (OrderStatus.FAILED, "Insufficient funds")
    assert [o.id for o in await shop.orders.list_orders(status="failed")] == ["o-2"]
    assert await shop.orders.update_status("missing", OrderStatus.COMPLETED) is None
    with pytest.raises(ValueError, match="bogus"):
        await shop.orders.update_status("o-1", "bogus")
