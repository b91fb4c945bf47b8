"""Where the shop's tables live in the saga log's SQLite file (the embedded default), a
compensating order's writes ride its saga's transitions too: the refusal of an address that
cannot be shipped to is taken in the transaction that would have recorded the shipment (it
writes nothing), and each compensation (release, refund, cancel) commits its undo in the
transaction that records the compensation, or not at all. The same rows, statuses and messages
as the separate writes gave; the undo exactly once, a tombstone where the forward write never
happened."""

from __future__ import annotations

from typing import Any

import pytest
from e2e_helpers import holdings, shop_rows, transactions
from sqlalchemy import create_engine

from checkout.bootstrap import Services
from checkout.domain.models import OrderLine, OrderStatus
from checkout.participants import inventory
from compiled_build import interpreted_only
from sagaway import SagaStatus, StepStatus

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

LEDGERS = ("inventory_reservations", "payments", "shipments")
LINES = [OrderLine(product_id="product_1", quantity=2)]


def _ledger_rows(services: Services, order_id: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: shop_rows(
            services,
            f"SELECT idempotency_key, status, compensation_key FROM {table} WHERE order_id = ?",
            order_id,
        )
        for table in LEDGERS
    }


def _keys(saga_id: str, step: str) -> tuple[str, str]:
    return f"{saga_id}:{step}:forward", f"{saga_id}:{step}:compensation"


async def test_an_undeliverable_order_compensates_in_the_transactions_of_its_steps(
    services: Services,
) -> None:
    before = holdings(services)
    writer = services.engine.store._writer_conn  # type: ignore[attr-defined]
    statements: list[str] = []
    writer.set_trace_callback(statements.append)
    try:
        view, _ = await services.checkout.place_order("user_3", LINES, wait=10)
    finally:
        writer.set_trace_callback(None)
    assert (view.status, view.error) == (OrderStatus.FAILED, "Invalid shipping address")
    saga_id = view.order.saga_id
    assert saga_id is not None
    record = await services.engine.get(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "Invalid shipping address"
    ship = record.steps[("ship_order", "forward")]
    assert (ship.status, ship.error) == (StepStatus.FAILED, "Invalid shipping address")
    for step in ("reserve_inventory", "process_payment"):
        assert record.steps[(step, "compensation")].status is StepStatus.COMPENSATED
    assert ("ship_order", "compensation") not in record.steps  # it failed for sure: no undo
    assert holdings(services) == before  # units back in stock, the money back
    reserve, release = _keys(saga_id, "reserve_inventory")
    pay, refund = _keys(saga_id, "process_payment")
    assert _ledger_rows(services, view.order.id) == {
        "inventory_reservations": [(reserve, "released", release)],
        "payments": [(pay, "refunded", refund)],
        "shipments": [],  # the address refused: nothing written, not even in a transaction
    }
    shop = ("products", "accounts", "inventory_reservations", "payments", "shipments")
    for done in transactions(statements):
        if any(any(table in s for table in shop) for s in done if not s.startswith("SELECT")):
            # every shop write in a transaction that records a saga's step, never its own
            assert any("sagaway_" in s for s in done), done
    undone = [
        t
        for t in transactions(statements)
        if any("UPDATE inventory_reservations" in s or "UPDATE payments" in s for s in t)
    ]
    assert len(undone) == 2  # the release and the refund, each once


def _unstorable_charge(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The payment step's output cannot be stored: the step fails uncertain (its action
    returned) and is compensated, its enlisted charge never written."""
    payment = services.participants.payment

    def charge_in_saga_log(*args: Any) -> Any:
        return (lambda conn: None), object()

    monkeypatch.setattr(payment, "charge_in_saga_log", charge_in_saga_log)


@interpreted_only  # replaces a method of a participant service: a compiled instance refuses that
async def test_a_compensation_whose_forward_write_never_happened_leaves_its_tombstone(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = holdings(services)
    _unstorable_charge(services, monkeypatch)
    view, _ = await services.checkout.place_order("user_1", LINES, wait=10)
    assert view.status is OrderStatus.FAILED
    saga_id = view.order.saga_id
    assert saga_id is not None
    record = await services.engine.get(saga_id)
    pay_row = record.steps[("process_payment", "forward")]
    assert (pay_row.status, pay_row.uncertain) == (StepStatus.FAILED, True)
    assert record.steps[("process_payment", "compensation")].status is StepStatus.COMPENSATED
    assert holdings(services) == before
    reserve, release = _keys(saga_id, "reserve_inventory")
    pay, refund = _keys(saga_id, "process_payment")
    rows = _ledger_rows(services, view.order.id)
    assert rows["payments"] == [(pay, "void", refund)]  # a late charge under it: a no-op
    assert rows["inventory_reservations"] == [(reserve, "released", release)]
    # The tombstone does its work: the late charge finds it and takes nothing.
    late = await services.participants.payment.charge(pay, view.order.id, "user_1", 100)
    assert late.status.value == "void"
    assert holdings(services) == before


@interpreted_only  # replaces a method of a participant service: a compiled instance refuses that
@pytest.mark.parametrize(
    ("participant", "step", "ledger", "undone"),
    [
        # the last compensation: its refused change would have ended the saga COMPENSATED
        ("inventory", "reserve_inventory", "inventory_reservations", "released"),
        # the first: its refused change also started the release
        ("payment", "process_payment", "payments", "refunded"),
    ],
)
async def test_a_compensation_whose_transition_is_not_written_writes_nothing_of_it(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    participant: str,
    step: str,
    ledger: str,
    undone: str,
) -> None:
    """The undo made, then its transaction rolled back (as a crash before the commit would
    leave it): nothing of it kept; the compensation, run again, undoes once."""
    before = holdings(services)
    service = getattr(services.participants, participant)
    method = "release_in_saga_log" if participant == "inventory" else "refund_in_saga_log"
    real = getattr(service, method)
    attempts: list[int] = []

    def in_saga_log(*args: Any, **kwargs: Any) -> Any:
        write = real(*args, **kwargs)
        assert write is not None
        attempts.append(1)
        if len(attempts) > 1:
            return write

        def lost(conn: Any) -> None:  # the first attempt's: written, then not committed
            write(conn)
            raise RuntimeError("lost before its commit")

        return lost

    monkeypatch.setattr(service, method, in_saga_log)
    view, _ = await services.checkout.place_order("user_3", LINES, wait=10)
    assert (view.status, view.error) == (OrderStatus.FAILED, "Invalid shipping address")
    saga_id = view.order.saga_id
    assert saga_id is not None
    assert len(attempts) == 2
    record = await services.engine.get(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    undo_row = record.steps[(step, "compensation")]
    assert (undo_row.status, undo_row.attempts) == (StepStatus.COMPENSATED, 2)
    retries = [
        (e.step, e.attempt, e.detail)
        for e in record.history
        if e.type.value == "compensation_retrying"
    ]
    assert retries == [(step, 1, "RuntimeError: lost before its commit")]
    for other in ("reserve_inventory", "process_payment"):
        assert record.steps[(other, "compensation")].status is StepStatus.COMPENSATED
    assert holdings(services) == before  # undone once, not twice
    forward, compensation = _keys(saga_id, step)
    assert _ledger_rows(services, view.order.id)[ledger] == [(forward, undone, compensation)]


@interpreted_only  # replaces a method of a participant service: a compiled instance refuses that
async def test_a_compensation_finding_its_undo_written_writes_nothing_twice(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release committed by a write of its own (the separate write's path, as before an
    upgrade), its answer lost (the compensation retried, as after a crash between the two):
    the compensation, run again in its transition, finds it released and moves nothing."""
    before = holdings(services)
    stock = services.participants.inventory
    real_in_saga_log = stock.release_in_saga_log
    separate: list[str] = []
    again: list[str] = []

    def release_in_saga_log(forward_key: str, idempotency_key: str, **kw: Any) -> Any:
        if not separate:  # the first attempt: a write of its own, committed, its answer lost
            engine = create_engine(services.settings.database_url)
            try:
                with engine.begin() as conn:
                    inventory.release(conn, forward_key, idempotency_key, kw["order_id"])
            finally:
                engine.dispose()
            separate.append(idempotency_key)
            raise ConnectionError("the answer lost")
        write = real_in_saga_log(forward_key, idempotency_key, **kw)
        assert write is not None

        def effect(conn: Any) -> None:
            # (the effect is handed the store's writer, a sqlite3 connection)
            sql = "SELECT status FROM inventory_reservations WHERE idempotency_key = ?"
            (status,) = conn.execute(sql, (forward_key,)).fetchone()
            again.append(status)  # what the retry finds: the first attempt's release
            write(conn)

        return effect

    monkeypatch.setattr(stock, "release_in_saga_log", release_in_saga_log)
    view, _ = await services.checkout.place_order("user_3", LINES, wait=10)
    assert (view.status, view.error) == (OrderStatus.FAILED, "Invalid shipping address")
    saga_id = view.order.saga_id
    assert saga_id is not None
    reserve, release_key = _keys(saga_id, "reserve_inventory")
    assert (separate, again) == ([release_key], ["released"])
    record = await services.engine.get(saga_id)
    release_row = record.steps[("reserve_inventory", "compensation")]
    assert (release_row.status, release_row.attempts) == (StepStatus.COMPENSATED, 2)
    assert holdings(services) == before  # released once
    assert _ledger_rows(services, view.order.id)["inventory_reservations"] == [
        (reserve, "released", release_key)
    ]
