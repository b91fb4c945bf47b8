"""An order checked out and its saga are recorded in one transaction where the orders live in
the saga log's SQLite file (``Engine.start_with``): no moment at which one is durable without
the other, so a kill before the saga's first step leaves either both or neither. Elsewhere
(PostgreSQL) the order is recorded, then its saga started and attached, as before; both ways
the order, the saga and its input come out the same."""

from __future__ import annotations

import sqlite3

import pytest
from e2e_helpers import hold_first_step, transactions

from checkout.bootstrap import Services
from checkout.domain.models import OrderInput, OrderLine, OrderStatus
from checkout.participants import saga_input
from checkout.service import OrderUnavailable
from checkout.tracking import saga_key

LINES = [OrderLine(product_id="product_1", quantity=1)]


def _shares_the_log(services: Services) -> bool:
    return services.settings.database_url.startswith("sqlite")


async def test_the_order_is_recorded_processing_with_its_saga_in_the_sagas_transaction(
    services: Services,
) -> None:
    statements: list[str] = []
    writer: sqlite3.Connection | None = None
    if _shares_the_log(services):
        writer = services.engine.store._writer_conn  # type: ignore[attr-defined]
        assert writer is not None
        writer.set_trace_callback(statements.append)
    try:
        # user_3 has no shipping address given here: the input takes the account's.
        view, created = await services.checkout.place_order("user_3", LINES, wait=10)
    finally:
        if writer is not None:
            writer.set_trace_callback(None)
    assert created
    assert (view.status, view.error) == (OrderStatus.FAILED, "Invalid shipping address")
    row = await services.participants.orders.get_order(view.order.id)
    assert row is not None
    assert row.saga_id == view.order.saga_id is not None
    record = await services.engine.get(row.saga_id)
    assert OrderInput.model_validate(record.input) == saga_input(row)
    assert row.shipping_address is not None
    if writer is None:
        return
    inserts = [
        t for t in transactions(statements) if any(s.startswith("INSERT INTO orders") for s in t)
    ]
    assert len(inserts) == 1
    assert any("INTO sagaway_instances" in s for s in inserts[0])  # the saga, same transaction
    assert not [s for s in statements if s.startswith("UPDATE orders") and "processing" in s]


@pytest.mark.parametrize("backend", ["sqlite"])  # (one transaction only on the SQLite log)
async def test_a_failure_between_the_orders_insert_and_the_sagas_leaves_neither(
    services: Services,
) -> None:
    """The saga's insert fails after the order's, in their one transaction (a trigger stands
    in for the disk): nothing of either is left, the client is told nothing was recorded, and
    the retry places the order once."""
    assert _shares_the_log(services)
    store = services.engine.store
    trigger = (
        "CREATE TRIGGER refuse_sagas BEFORE INSERT ON sagaway_instances "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    await store.run_in_transaction(lambda conn: conn.execute(trigger))  # type: ignore[attr-defined]
    with pytest.raises(OrderUnavailable, match="the order was not recorded"):
        await services.checkout.place_order("user_1", LINES, order_id="ord-cut", wait=10)
    assert await services.participants.orders.get_order("ord-cut") is None
    assert (await services.engine.list_sagas()).total == 0
    await store.run_in_transaction(  # type: ignore[attr-defined]
        lambda conn: conn.execute("DROP TRIGGER refuse_sagas")
    )
    view, created = await services.checkout.place_order(
        "user_1", LINES, order_id="ord-cut", wait=10
    )
    assert (created, view.status) == (True, OrderStatus.COMPLETED)
    assert (await services.engine.list_sagas()).total == 1


async def test_an_order_whose_key_a_saga_holds_already_gets_that_saga(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saga with the order's key and no order (the order's row lost, say): the one-write
    start writes nothing (the order's rows undone with it), and the order is recorded and
    attached to that saga as before: one saga per order."""
    released = hold_first_step(services, monkeypatch)
    earlier = saga_input_for("ord-k")
    first = await services.engine.start(services.saga, earlier, idempotency_key=saga_key("ord-k"))
    view, created = await services.checkout.place_order("user_1", LINES, order_id="ord-k")
    assert created
    assert view.order.saga_id == first
    row = await services.participants.orders.get_order("ord-k")
    assert row is not None
    assert (row.saga_id, row.status) == (first, OrderStatus.PROCESSING)
    assert (await services.engine.list_sagas()).total == 1
    released.set()
    assert (await services.engine.wait(first, timeout=10)).status.is_terminal


def saga_input_for(order_id: str) -> OrderInput:
    return OrderInput(order_id=order_id, customer_id="user_1", items=LINES)
