"""OpenTelemetry spans from the tracing hook (an in-memory exporter), and the switch."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sagakit import Kit, Order

from sagaway import StepContext
from sagaway.testing import saga_engine
from sagaway.tracing import TracingHook, inject, tracing_enabled, tracing_hook


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def hook(exporter: InMemorySpanExporter) -> TracingHook:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingHook(provider.get_tracer("test"))


async def test_a_span_per_saga_and_per_attempt_with_their_attributes(
    kit: Kit, order: Order, hook: TracingHook, exporter: InMemorySpanExporter
) -> None:
    kit.faults.fail("b", times=1)
    kit.faults.reject("c", "Insufficient funds")
    async with saga_engine(kit.saga, hooks=[hook]) as h:
        record = await h.run(kit.saga, order)
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == [
        "step a",
        "step b",
        "step b",
        "step c",
        "compensate b",
        "compensate a",
        "saga order",
    ]
    saga = spans[-1]
    assert saga.attributes is not None
    assert saga.attributes["sagaway.saga.id"] == record.id
    assert saga.attributes["sagaway.saga.status"] == "COMPENSATED"
    for span in spans[:-1]:
        assert span.parent is not None
        assert span.parent.span_id == saga.context.span_id
        assert span.context.trace_id == saga.context.trace_id
    retried = spans[1]
    assert retried.attributes == {
        "sagaway.saga.id": record.id,
        "sagaway.saga.name": "order",
        "sagaway.step": "b",
        "sagaway.step.phase": "forward",
        "sagaway.step.attempt": 1,
        "sagaway.idempotency_key": f"{record.id}:b:forward",
        "sagaway.step.outcome": "retrying",
    }
    assert retried.status.status_code is StatusCode.ERROR
    assert spans[2].status.status_code is StatusCode.UNSET
    assert spans[3].status.description == "Insufficient funds"
    undo = spans[4].attributes
    assert undo is not None
    assert undo["sagaway.idempotency_key"] == f"{record.id}:b:compensation"


async def test_the_step_span_is_current_while_the_action_runs(
    hook: TracingHook, exporter: InMemorySpanExporter
) -> None:
    seen: list[dict[str, str]] = []
    kit = Kit(steps=("only",))
    original = kit.saga.steps[0].action

    async def action(ctx: StepContext, order: Any) -> Any:
        seen.append(dict(inject({})))
        return await original(ctx, order)

    kit.saga.steps[0].action = action
    async with saga_engine(kit.saga, hooks=[hook]) as h:
        await h.run(kit.saga, Order(id="x", amount=1))
    step = exporter.get_finished_spans()[0]
    trace_id = format(step.context.trace_id, "032x")
    span_id = format(step.context.span_id, "016x")
    assert len(seen) == 1
    assert list(seen[0]) == ["traceparent"]
    assert seen[0]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")  # then the flags
    assert trace.get_current_span() is trace.INVALID_SPAN, "detached after the step"


async def test_the_saga_span_joins_the_trace_current_at_start(
    kit: Kit, order: Order, hook: TracingHook, exporter: InMemorySpanExporter
) -> None:
    tracer = TracerProvider().get_tracer("caller")
    async with saga_engine(kit.saga, hooks=[hook]) as h:
        with tracer.start_as_current_span("POST /orders") as request:
            saga_id = await h.start(kit.saga, order)
        await h.wait(saga_id)
    saga = exporter.get_finished_spans()[-1]
    assert saga.parent is not None
    assert saga.parent.span_id == request.get_span_context().span_id


def test_off_unless_an_exporter_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not tracing_enabled({})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_enabled({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert tracing_hook() is None
    assert inject({}) == {}, "no span, no header"
