"""Turn domain objects and saga records into response models (the API's vocabulary lives here).

Steps never reached have no row in the saga log: they are shown ``PENDING`` while the saga is
active and ``SKIPPED`` once it is terminal. A step's summary status is its compensation's when it
was compensated (``COMPENSATED``), else its forward outcome.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from typing_extensions import TypedDict

from checkout.api.schemas import (
    AddressOut,
    EventOut,
    ItemOut,
    OrderOut,
    OrderSummary,
    SagaDetail,
    SagaSummary,
    SeedSagaStatus,
    StepOut,
    instant,
    money,
    when,
)
from checkout.domain.models import OrderInfo, PricedLine
from checkout.orderflow.tables import FlowOrderStatus
from checkout.sagas import STEP_NAMES
from checkout.service import OrderView
from checkout.tracking import order_id_of
from sagaway import Phase, SagaRecord, SagaStatus, StepRecord, StepStatus
from sagaway.statuses import COMPENSATION


def _step_names(record: SagaRecord) -> list[str]:
    names = list(STEP_NAMES) if record.name == "checkout" else []
    names += [name for name, _ in record.steps if name not in names]
    return names


def _unreached(record: SagaRecord) -> StepStatus:
    return StepStatus.SKIPPED if record.status.is_terminal else StepStatus.PENDING


def order_summary(order: OrderInfo) -> OrderSummary:
    """An order as listed: its row as recorded (the status mirrors its saga)."""
    return OrderSummary(
        order_id=order.id,
        customer_id=order.customer_id,
        status=order.status,
        saga_id=order.saga_id,
        total=money(order.total_cents),
        error=order.error,
        items=[ItemOut.of(line) for line in order.items],
        shipping_address=AddressOut.of(order.shipping_address),
        payment_method=order.payment_method,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )


def flow_order_summary(order: dict[str, Any]) -> OrderSummary:
    """A pay-later order (``checkout.orderflow``) as listed next to the checkout's."""
    address = order["shipping_address"]
    return OrderSummary(
        order_id=order["order_id"],
        customer_id=order["customer_id"],
        status=FlowOrderStatus(order["status"]),
        kind="pay_later",
        payment_id=order["payment_id"],
        courier=order["courier"],
        saga_id=order["saga_id"],
        total=money(order["amount_cents"]),
        error=order["reason"],
        items=[
            # Orders placed before the lines were stored priced show a unit price of 0.
            ItemOut.of(PricedLine.model_validate({"unit_price_cents": 0, **line}))
            for line in order["items"]
        ],
        shipping_address=None if address is None else AddressOut.model_validate(address),
        payment_method="pay_later",
        created_at=datetime.fromtimestamp(order["created_at"], UTC),
        updated_at=datetime.fromtimestamp(order["updated_at"], UTC),
    )


def order_out(view: OrderView) -> OrderOut:
    """The answer of placing or reading an order. Built as one mapping validated in one call:
    pydantic-core builds the nested items, address and steps itself, where a model per part
    (``ItemOut.of``, ``AddressOut.of``, ``StepSummary``) cost a Python ``__init__`` each,
    ~30% more (the same document either way)."""
    order, saga = view.order, view.saga
    address = order.shipping_address
    return OrderOut.model_validate(
        {
            "order_id": order.id,
            "customer_id": order.customer_id,
            "status": view.status,
            "saga_id": saga.id if saga is not None else order.saga_id,
            "saga_status": saga.status if saga is not None else None,
            "total": money(order.total_cents),
            "error": view.error,
            "items": [
                {
                    "product_id": line.product_id,
                    "quantity": line.quantity,
                    "unit_price": money(line.unit_price_cents),
                    "line_total": money(line.total_cents),
                }
                for line in order.items
            ],
            "shipping_address": None if address is None else address.__dict__,
            "payment_method": order.payment_method,
            "steps": step_rows(saga),
            "created_at": order.created_at,
            "updated_at": order.updated_at,
        }
    )


def order_json(view: OrderView) -> bytes:
    """:func:`order_out`'s document as JSON, the bytes ``OrderOut`` dumps (a test compares
    them), without building the model: validating the mapping into an ``OrderOut`` (its
    items, address, steps, enums, ``Decimal`` amounts) and dumping it cost ~3x this, which
    only serialises (``_OrderJSON``). Money goes in as ``cents / 100``: the float nearest the
    amount, as ``float(Decimal)`` of the two-place ``Decimal`` gives (both round once)."""
    order, saga = view.order, view.saga
    address = order.shipping_address
    document: _OrderJSON = {
        "order_id": order.id,
        "customer_id": order.customer_id,
        "status": view.status,
        "kind": "checkout",
        "payment_id": None,
        "courier": None,
        "saga_id": saga.id if saga is not None else order.saga_id,
        "total": order.total_cents / 100,
        "error": view.error,
        "items": [
            {
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price": line.unit_price_cents / 100,
                "line_total": line.total_cents / 100,
            }
            for line in order.items
        ],
        "shipping_address": None if address is None else address.__dict__,
        "payment_method": order.payment_method,
        "created_at": order.created_at,
        "updated_at": order.updated_at,
        "saga_status": saga.status if saga is not None else None,
        "steps": step_rows(saga),
    }
    return _ORDER_JSON.dump_json(document)


class _ItemJSON(TypedDict):
    product_id: str
    quantity: int
    unit_price: float
    line_total: float


class _AddressJSON(TypedDict):
    street: str | None
    city: str | None
    province: str | None
    postal_code: str | None
    country: str | None


class _StepJSON(TypedDict):
    name: str
    status: str
    error: str | None


class _OrderJSON(TypedDict):
    """``OrderOut``'s fields in its order, as their JSON: what :func:`order_json` dumps."""

    order_id: str
    customer_id: str
    status: str
    kind: str
    payment_id: str | None
    courier: str | None
    saga_id: str | None
    total: float
    error: str | None
    items: list[_ItemJSON]
    shipping_address: _AddressJSON | None
    payment_method: str
    created_at: datetime
    updated_at: datetime
    saga_status: str | None
    steps: list[_StepJSON]


_ORDER_JSON = TypeAdapter(_OrderJSON)


def step_rows(record: SagaRecord | None) -> list[dict[str, Any]]:
    """One ``StepSummary`` mapping per step (name, status, error: the failing step's error is
    set), for :func:`order_out`'s one validation and :func:`order_json`. The rows are sorted
    by phase in one walk: a look-up by ``(name, Phase)`` hashes the ``Phase``, a Python call
    (``Enum.__hash__``), eight an order."""
    if record is None:
        return []
    forward: dict[str, StepRecord] = {}
    undone: dict[str, StepRecord] = {}
    for (name, phase), row in record.steps.items():
        (undone if phase is COMPENSATION else forward)[name] = row
    out: list[dict[str, Any]] = []
    for name in _step_names(record):
        ran = forward.get(name)
        if ran is None:
            out.append({"name": name, "status": _unreached(record), "error": None})
            continue
        undo = undone.get(name)
        shown = undo if undo is not None else ran
        out.append({"name": name, "status": shown.status, "error": shown.error or ran.error})
    return out


def _step_out(row: StepRecord) -> StepOut:
    return StepOut(
        name=row.name,
        phase=row.phase,
        status=row.status,
        attempts=row.attempts,
        error=row.error,
        uncertain=row.uncertain,
        started_at=when(row.started_at),
        finished_at=when(row.finished_at),
    )


def saga_summary(record: SagaRecord) -> SagaSummary:
    return SagaSummary(
        saga_id=record.id,
        name=record.name,
        version=record.version,
        status=record.status,
        order_id=order_id_of(record),
        error=record.error,
        created_at=instant(record.created_at),
        updated_at=instant(record.updated_at),
        pinned=record.pinned,
    )


def saga_detail(record: SagaRecord) -> SagaDetail:
    """Forward rows in step order (unreached steps PENDING/SKIPPED), then compensations in
    the order they ran (reverse step order), then the history."""
    names = _step_names(record)
    steps = []
    for name in names:
        row = record.steps.get((name, Phase.FORWARD))
        if row is None:
            row = StepRecord(name, Phase.FORWARD, _unreached(record))
        steps.append(_step_out(row))
    for name in reversed(names):
        row = record.steps.get((name, Phase.COMPENSATION))
        if row is not None:
            steps.append(_step_out(row))
    history = [
        EventOut(
            at=instant(e.at),
            type=e.type,
            step=e.step,
            phase=e.phase,
            attempt=e.attempt,
            detail=e.detail,
        )
        for e in record.history
    ]
    return SagaDetail(
        **saga_summary(record).model_dump(),
        owner=record.owner,
        lease_expires_at=when(record.lease_expires_at),
        deadline_at=when(record.deadline_at),
        cancel_requested=record.cancel_requested,
        input=record.input,
        steps=steps,
        history=history,
    )


# --------------------------------------------------------------------------- seed vocabulary

_SEED_SAGA = {
    SagaStatus.PENDING: "PENDING",
    SagaStatus.RUNNING: "PENDING",
    SagaStatus.COMPENSATING: "COMPENSATING",
    SagaStatus.SUCCEEDED: "SUCCEEDED",
    SagaStatus.COMPENSATED: "COMPENSATED",
    SagaStatus.FAILED: "FAILED",
}
_SEED_STEP = {
    StepStatus.PENDING: "PENDING",
    StepStatus.RUNNING: "PENDING",
    StepStatus.SKIPPED: "SKIPPED",
    StepStatus.SUCCEEDED: "SUCCEEDED",
    StepStatus.FAILED: "FAILED",
    StepStatus.COMPENSATING: "COMPENSATING",
    StepStatus.COMPENSATED: "COMPENSATED",
}


def seed_status(order_id: str, record: SagaRecord | None) -> SeedSagaStatus:
    """``GET /saga/{order_id}``: PENDING / SUCCEEDED / FAILED / COMPENSATING / COMPENSATED, and
    SKIPPED for a participant that a finished saga never reached."""

    def step(name: str) -> str:
        if record is None:
            return "PENDING"
        undo = record.steps.get((name, Phase.COMPENSATION))
        forward = record.steps.get((name, Phase.FORWARD))
        row = undo or forward
        return _SEED_STEP[_unreached(record) if row is None else row.status]

    return SeedSagaStatus(
        order_id=order_id,
        saga_id=None if record is None else record.id,
        status="PENDING" if record is None else _SEED_SAGA[record.status],
        inventory_status=step("reserve_inventory"),
        payment_status=step("process_payment"),
        shipping_status=step("ship_order"),
    )
