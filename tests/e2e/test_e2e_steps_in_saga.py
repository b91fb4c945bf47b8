"""Where the shop's tables live in the saga log's SQLite file (the embedded default), the
participants' forward writes (reserve, charge, create the shipment) ride their steps'
transitions (``ctx.atomic()``): each commits in the transaction that records its step, or not
at all. A business refusal taken there (too little stock, too little money) refuses that
transaction: stock and money untouched, no ledger row, the order failed with the message the
separate write gave. A step that finds its write recorded already (by a write of its own, before
a crash) returns it: nothing written twice."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_helpers import hold_first_step, holdings, shop_rows, transactions

from checkout.bootstrap import Services
from checkout.domain.models import OrderLine, OrderStatus
from sagaway import SagaStatus, StepStatus

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

LEDGERS = ("inventory_reservations", "payments", "shipments")


def _ledger_rows(services: Services, order_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: shop_rows(
            services, f"SELECT idempotency_key, status FROM {table} WHERE order_id = ?", order_id
        )
        for table in LEDGERS
    }


async def test_each_write_commits_in_the_transaction_that_records_its_step(
    services: Services,
) -> None:
    writer = services.engine.store._writer_conn  # type: ignore[attr-defined]
    statements: list[str] = []
    writer.set_trace_callback(statements.append)
    try:
        view, _ = await services.checkout.place_order(
            "user_1", [OrderLine(product_id="product_1", quantity=2)], wait=10
        )
    finally:
        writer.set_trace_callback(None)
    assert view.status is OrderStatus.COMPLETED
    saga_id = view.order.saga_id
    for table in LEDGERS:
        carrying = [t for t in transactions(statements) if any(f"INTO {table}" in s for s in t)]
        assert len(carrying) == 1, table  # one write, never a transaction of its own:
        assert any("UPDATE sagaway_instances" in s for s in carrying[0]), table
    assert _ledger_rows(services, view.order.id) == {
        "inventory_reservations": [(f"{saga_id}:reserve_inventory:forward", "reserved")],
        "payments": [(f"{saga_id}:process_payment:forward", "captured")],
        "shipments": [(f"{saga_id}:ship_order:forward", "created")],
    }


@pytest.mark.parametrize(
    ("customer", "line", "step", "message"),
    [
        (
            "user_1",
            OrderLine(product_id="product_3", quantity=1000),
            "reserve_inventory",
            "Insufficient inventory",
        ),
        (
            "user_3",
            OrderLine(product_id="product_1", quantity=10),
            "process_payment",
            "Insufficient funds",
        ),
    ],
)
async def test_a_refused_write_leaves_stock_and_money_as_they_were(
    services: Services, customer: str, line: OrderLine, step: str, message: str
) -> None:
    before = holdings(services)
    view, _ = await services.checkout.place_order(customer, [line], wait=10)
    assert (view.status, view.error) == (OrderStatus.FAILED, message)
    record = await services.engine.get(view.order.saga_id)
    assert record.steps[(step, "forward")].error == message
    assert record.steps[(step, "forward")].status is StepStatus.FAILED
    assert holdings(services) == before
    rows = _ledger_rows(services, view.order.id)
    assert rows["shipments"] == []
    assert rows["payments"] == []
    if step == "reserve_inventory":
        assert rows["inventory_reservations"] == []
    else:  # the reservation made, then released by the compensation
        assert [status for _, status in rows["inventory_reservations"]] == ["released"]


async def test_a_step_finding_its_write_recorded_returns_it_and_writes_nothing_twice(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reservation recorded by a write of its own under the step's key (the separate
    write's path, before a crash: the step's outcome never recorded): the step, run again,
    finds it and returns it; the units move once."""
    released = hold_first_step(services, monkeypatch)
    lines = [OrderLine(product_id="product_2", quantity=3)]
    stock = dict((pid, s) for pid, s, _ in holdings(services)[0])
    view, _ = await services.checkout.place_order("user_1", lines, order_id="ord-again")
    saga_id = view.order.saga_id
    assert saga_id is not None
    key = f"{saga_id}:reserve_inventory:forward"
    earlier = await services.participants.inventory.reserve(key, "ord-again", lines)
    released.set()
    record = await services.engine.wait(saga_id, timeout=10)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("reserve_inventory") == earlier
    after = dict((pid, s) for pid, s, _ in holdings(services)[0])
    assert after["product_2"] == stock["product_2"] - 3
    assert _ledger_rows(services, "ord-again")["inventory_reservations"] == [(key, "reserved")]
