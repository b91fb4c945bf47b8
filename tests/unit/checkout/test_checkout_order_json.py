"""``order_json`` writes the bytes FastAPI writes for the ``OrderOut`` of the same view."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import TypeAdapter

from checkout.api.schemas import OrderOut
from checkout.api.views import order_json, order_out
from checkout.domain.models import Address, OrderInfo, OrderStatus, PricedLine
from checkout.service import OrderView
from sagaway import Phase, SagaRecord, SagaStatus, StepRecord, StepStatus

AS_FASTAPI_DUMPS = TypeAdapter(OrderOut)
AT = datetime(2026, 11, 27, 7, 30, 1, 123456, tzinfo=UTC)


def _order(**changes: object) -> OrderInfo:
    fields: dict[str, object] = {
        "id": "ord_1",
        "customer_id": "user_1",
        "status": OrderStatus.COMPLETED,
        "total_cents": 10_000,
        "items": [PricedLine(product_id="product_1", quantity=2, unit_price_cents=5_000)],
        "shipping_address": Address(street="1 Main", city="Toronto", country="CA"),
        "payment_method": "card",
        "saga_id": "s1",
        "idempotency_key": None,
        "error": None,
        "created_at": AT,
        "updated_at": AT + timedelta(seconds=1),
    }
    return OrderInfo.model_validate({**fields, **changes})


def _saga(status: SagaStatus, *steps: StepRecord, error: str | None = None) -> SagaRecord:
    record = SagaRecord("s1", "checkout", 1, status, {"order_id": "ord_1"}, 1.0, 2.0)
    record.error = error
    for step in steps:
        record.steps[step.name, step.phase] = step
    return record


def _step(name: str, status: StepStatus, phase: Phase = Phase.FORWARD, error: str | None = None):
    return StepRecord(name, phase, status, attempts=1, error=error)


OK = StepStatus.SUCCEEDED
VIEWS = {
    "completed": OrderView(
        _order(),
        _saga(
            SagaStatus.SUCCEEDED,
            *(
                _step(n, OK)
                for n in ("validate_order", "reserve_inventory", "process_payment", "ship_order")
            ),
        ),
        OrderStatus.COMPLETED,
        None,
    ),
    "compensated, unicode error": OrderView(
        _order(status=OrderStatus.FAILED, error="Adresse «invalide» \u2028 \x01"),
        _saga(
            SagaStatus.COMPENSATED,
            _step("validate_order", OK),
            _step("reserve_inventory", OK),
            _step("reserve_inventory", StepStatus.COMPENSATED, Phase.COMPENSATION),
            _step("process_payment", StepStatus.FAILED, error='Insufficient "funds"'),
            error="Insufficient funds",
        ),
        OrderStatus.FAILED,
        "Insufficient funds",
    ),
    "running, steps unreached": OrderView(
        _order(status=OrderStatus.PROCESSING),
        _saga(SagaStatus.RUNNING, _step("validate_order", StepStatus.RUNNING)),
        OrderStatus.PROCESSING,
        None,
    ),
    "draft, no address": OrderView(
        _order(status=OrderStatus.PENDING, saga_id=None, shipping_address=None),
        None,
        OrderStatus.PENDING,
        None,
    ),
    "saga unreadable": OrderView(
        _order(status=OrderStatus.PROCESSING), None, OrderStatus.PROCESSING, None
    ),
    "awkward amounts, another zone, no microseconds": OrderView(
        _order(
            total_cents=123_456_789_012_345 * 3 + 7,
            items=[
                PricedLine(product_id="p", quantity=3, unit_price_cents=123_456_789_012_345),
                PricedLine(product_id="q", quantity=7, unit_price_cents=1),
                PricedLine(product_id="r", quantity=1, unit_price_cents=0),
                PricedLine(product_id="s", quantity=999_999, unit_price_cents=10),
            ],
            created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5))),
            updated_at=datetime(2026, 1, 2, 3, 4, 5),
        ),
        None,
        OrderStatus.COMPLETED,
        None,
    ),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_order_json_is_what_fastapi_dumps_for_the_order_out(name: str) -> None:
    view = VIEWS[name]
    assert order_json(view) == AS_FASTAPI_DUMPS.dump_json(order_out(view), by_alias=True)


@pytest.mark.parametrize("cents", [0, 1, 5, 10, 99, 101, 1_005, 123_456_789, 2**53 + 1, 10**20 + 3])
def test_cents_over_100_is_the_float_of_the_two_place_decimal(cents: int) -> None:
    view = VIEWS["draft, no address"]
    priced = OrderView(
        view.order.model_copy(update={"total_cents": cents}), None, view.status, None
    )
    assert order_json(priced) == AS_FASTAPI_DUMPS.dump_json(order_out(priced), by_alias=True)
