"""OpenTelemetry spans from the tracing hook (an in-memory exporter), and the switch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sagakit import Kit, Order

from sagaway import StepContext
from sagaway.hooks import ClaimReason
from sagaway.participant import Participant
from sagaway.state import Phase
from sagaway.testing import saga_engine
from sagaway.tracing import (
    TracingHook,
    inject,
    participant_span,
    reply_outcome,
    tracing_enabled,
    tracing_hook,
)
from sagaway.transport.base import Command


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


def _command(ctx: StepContext, headers: dict[str, str] | None = None) -> Command:
    """The command a remote step would send for ``ctx`` (as the runner builds it)."""
    return Command(
        ctx.idempotency_key,
        ctx.saga_id,
        ctx.saga_name,
        ctx.step,
        ctx.phase,
        ctx.attempt,
        "inventory",
        "reserve",
        {"sku": "p1"},
        headers={} if headers is None else headers,
    )


@pytest.fixture
def global_provider(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> TracerProvider:
    """A participant process whose tracing is on (an SDK provider), exporting to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(trace, "get_tracer", lambda name, *a, **kw: provider.get_tracer(name))
    return provider


async def test_one_order_is_one_trace_across_the_participant(
    tmp_path: Any,
    hook: TracingHook,
    exporter: InMemorySpanExporter,
    global_provider: TracerProvider,
) -> None:
    """The engine writes traceparent into the command at dispatch; the participant handling
    it (another service) continues that trace under the step's attempt."""
    inventory = Participant("inventory", f"sqlite:///{tmp_path}/inventory.db")
    inventory.create_inbox()

    @inventory.handler("reserve")
    def reserve(conn: Any, payload: dict[str, str]) -> dict[str, str]:
        return {"reserved": payload["sku"]}

    sent: list[Command] = []
    kit = Kit(steps=("reserve",))
    local = kit.saga.steps[0].action

    async def remote(ctx: StepContext, order: Any) -> Any:
        command = _command(ctx)
        hook.before_dispatch(SimpleNamespace(id=ctx.saga_id), command)  # type: ignore[arg-type]
        sent.append(command)
        # Over the wire: the participant sees only what the command carries.
        received = Command.from_json(command.to_json())
        with trace.use_span(trace.INVALID_SPAN):  # another process: no current span
            reply = await inventory.handle(received)
        assert reply.ok
        return await local(ctx, order)

    kit.saga.steps[0].action = remote
    try:
        async with saga_engine(kit.saga, hooks=[hook]) as h:
            record = await h.run(kit.saga, Order(id="x", amount=1))
    finally:
        await inventory.close()
    assert record.error is None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"saga order", "step reserve", "handle inventory.reserve"}
    saga, step, handled = (
        spans["saga order"],
        spans["step reserve"],
        spans["handle inventory.reserve"],
    )
    assert (
        sent[0]
        .headers["traceparent"]
        .startswith(
            f"00-{format(step.context.trace_id, '032x')}-{format(step.context.span_id, '016x')}-"
        )
    )
    assert {s.context.trace_id for s in (saga, step, handled)} == {saga.context.trace_id}
    assert handled.parent is not None
    assert handled.parent.span_id == step.context.span_id
    assert handled.attributes is not None
    assert handled.attributes["sagaway.idempotency_key"] == f"{record.id}:reserve:forward"
    assert handled.attributes["sagaway.participant"] == "inventory"
    assert handled.attributes["sagaway.reply.ok"] is True


async def test_a_command_sent_as_the_saga_parks_carries_the_saga_span(
    kit: Kit, order: Order, hook: TracingHook, exporter: InMemorySpanExporter
) -> None:
    """Between attempts (a command written to the outbox with the park), the saga's span is
    the parent; the span closes at the park, and a reply reaching this process continues the
    saga in the same trace."""
    record = SimpleNamespace(id="s1", name="order", version=1)
    hook.after_claim(record, ClaimReason.STARTED)  # type: ignore[arg-type]
    command = _command(
        SimpleNamespace(  # type: ignore[arg-type]
            idempotency_key="s1:a:forward",
            saga_id="s1",
            saga_name="order",
            step="a",
            phase=Phase.FORWARD,
            attempt=1,
        )
    )
    hook.before_dispatch(record, command)  # type: ignore[arg-type]
    hook.on_park(record, "reply:inventory.reserve")  # type: ignore[arg-type]
    (parked,) = exporter.get_finished_spans()
    assert command.headers["traceparent"].split("-")[1:3] == [
        format(parked.context.trace_id, "032x"),
        format(parked.context.span_id, "016x"),
    ]
    hook.after_claim(record, ClaimReason.RECOVERED)  # type: ignore[arg-type]  # the reply
    hook.on_finish(SimpleNamespace(id="s1", status=SimpleNamespace(value="SUCCEEDED"), error=None))  # type: ignore[arg-type]
    resumed = exporter.get_finished_spans()[-1]
    assert resumed.context.trace_id == parked.context.trace_id
    assert resumed.parent is not None
    assert resumed.parent.span_id == parked.context.span_id


async def test_participant_spans_cost_nothing_with_tracing_off() -> None:
    command = Command("k", "s", "order", "a", Phase.FORWARD, 1, "inventory", "reserve", None)
    with participant_span(command) as span:
        assert span is None
    reply_outcome(span, False, "refused")  # a no-op
