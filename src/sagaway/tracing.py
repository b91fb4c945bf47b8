"""OpenTelemetry tracing as an engine hook (the ``otel`` extra: API, SDK, OTLP/HTTP exporter).

Configured by the standard variables, **off unless** ``OTEL_TRACES_EXPORTER`` names an exporter:
``console`` (spans printed as JSON on stdout) or ``otlp`` (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``... read by the exporter; HTTP/protobuf), several separated by
commas; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service. Off, no hook is
registered: the engine calls nothing and the cost is zero.

Spans:

* ``saga {name}``: from the moment an engine starts driving the saga to its end (or until the
  engine lets go of it: another engine continues in a span of its own, in the same trace when
  the saga was started under one). Its parent is whatever span was current when ``start`` was
  called (the HTTP request that placed the order), so one order is one trace.
* ``step {step}`` / ``compensate {step}``: one per attempt, child of the saga span, current while
  the action runs, so calls the action makes (instrumented HTTP clients, :func:`inject`) carry
  its context. Attributes: ``sagaway.saga.id``, ``sagaway.saga.name``, ``sagaway.step``,
  ``sagaway.step.phase``, ``sagaway.step.attempt``, ``sagaway.idempotency_key``; failed
  attempts have status ERROR and the error text.

Across services: a remote step's command carries the trace. The hook's ``before_dispatch``
writes the context of the step's attempt span (or, between attempts, the saga span) as W3C
``traceparent``/``tracestate`` into ``Command.headers``, which every transport sends with the
command (HTTP headers and the JSON body; AMQP message headers and body). The participant
continues the trace from them: :func:`participant_span` (``Participant.handle`` opens one per
delivery) or, for any other receiver, :func:`continue_trace` over the headers it got. So one
order is one trace: the API request, the saga, each step attempt, and under it the
participant's handling of the command, whichever process or service ran it.

:func:`inject` writes the current context into any dict of headers (an action's own HTTP call).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sagaway.context import StepContext
from sagaway.hooks import ClaimReason, Hook, StepOutcome
from sagaway.state import Phase, SagaRecord

if TYPE_CHECKING:
    from sagaway.transport.base import Command

__all__ = [
    "TracingHook",
    "check_exporters",
    "continue_trace",
    "inject",
    "participant_span",
    "reply_outcome",
    "tracing_active",
    "tracing_enabled",
    "tracing_hook",
]

log = logging.getLogger("sagaway.tracing")

PARKED_TRACES = 10_000  # parked sagas whose trace a reply to this process continues
_configured: list[bool] = []  # the global TracerProvider is set once per process


def tracing_enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    """True when ``OTEL_TRACES_EXPORTER`` asks for spans (and ``OTEL_SDK_DISABLED`` does not
    forbid them)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return bool(exporters - {"", "none"})


def check_exporters() -> None:
    """Raise ValueError if ``OTEL_TRACES_EXPORTER`` names an exporter sagaway cannot set up
    (checked at start, so a typo is a clear error, not a traceback)."""
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name and name not in ("console", "otlp", "none"):
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use console, otlp or none"
            )


def _configure_sdk() -> None:
    """Install a TracerProvider exporting to what ``OTEL_TRACES_EXPORTER`` names."""
    if _configured:
        return
    check_exporters()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create())
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name == "console":
            # Simple: each span is printed when it ends, none lost at exit.
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured.append(True)


def tracing_hook() -> TracingHook | None:
    """The hook the environment asks for: a TracingHook over a configured SDK, or None (off).
    Raises ValueError for an unknown exporter and ImportError without the ``otel`` extra."""
    if not tracing_enabled():
        return None
    _configure_sdk()
    return TracingHook()


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current trace context (``traceparent``...) to ``headers``; return them. A no-op
    when tracing is off or the OpenTelemetry API is not installed."""
    try:
        from opentelemetry import propagate
    except ImportError:  # pragma: no cover - the API comes with FastAPI
        return headers
    propagate.inject(headers)
    return headers


def tracing_active() -> bool:
    """True when spans are recorded in this process: sagaway configured the SDK, or the
    application installed a TracerProvider of its own. (Off, the helpers below do nothing.)"""
    if _configured:
        return True
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the API comes with FastAPI
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def continue_trace(
    headers: Mapping[str, str],
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    tracer: Any = None,
) -> Iterator[Any]:
    """A span ``name`` continuing the trace whose context ``headers`` carry (``traceparent``;
    a new trace without it), current inside the block, which it yields. With tracing off and
    no ``tracer`` given it does nothing and yields None."""
    if tracer is None and not tracing_active():
        yield None
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract(dict(headers))
    tracer = tracer or trace.get_tracer("sagaway.participant")
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=dict(attributes or {})
    ) as span:
        yield span


@contextmanager
def participant_span(
    command: Command, participant: str = "", *, tracer: Any = None
) -> Iterator[Any]:
    """The span of a participant handling one delivery of ``command``, in the saga's trace
    (see :func:`continue_trace`). Attributes: the command's saga id and name, step, phase,
    attempt, idempotency key (``message_id``), participant and command; :func:`reply_outcome`
    marks a refusal."""
    attributes = {
        "sagaway.saga.id": command.saga_id,
        "sagaway.saga.name": command.saga_name,
        "sagaway.step": command.step,
        "sagaway.step.phase": command.phase.value,
        "sagaway.step.attempt": command.attempt,
        "sagaway.idempotency_key": command.message_id,
        "sagaway.participant": participant or command.participant,
        "sagaway.command": command.command,
    }
    with continue_trace(
        command.headers, f"handle {command.topic}", attributes=attributes, tracer=tracer
    ) as span:
        yield span


def reply_outcome(span: Any, ok: bool, error: str | None) -> None:
    """Record a participant's reply on its span (None: tracing off): a refusal is an error."""
    if span is None:
        return
    from opentelemetry import trace

    span.set_attribute("sagaway.reply.ok", ok)
    if not ok:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))


class TracingHook(Hook):
    """A span per saga run and per step attempt (see the module docstring). ``tracer``: an
    OpenTelemetry tracer (default: the global provider's)."""

    def __init__(self, tracer: Any = None) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        self._trace, self._context = trace, otel_context
        self._tracer = tracer or trace.get_tracer("sagaway")
        self._sagas: dict[str, Any] = {}  # saga id -> its span
        self._steps: dict[int, tuple[Any, Any]] = {}  # id(ctx) -> (span, context token)
        self._attempts: dict[str, Any] = {}  # saga id -> the span of its running attempt
        # saga id -> its last saga span's context, while parked: a reply reaching this process
        # continues the saga in the same trace (bounded: parked sagas are rows, not RAM).
        self._parked: dict[str, Any] = {}
        from opentelemetry import propagate

        self._propagate = propagate

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        parked = self._parked.pop(record.id, None)
        parent = None
        if parked is not None:
            parent = self._trace.set_span_in_context(self._trace.NonRecordingSpan(parked))
        span = self._tracer.start_span(
            f"saga {record.name}",
            context=parent,
            attributes={
                "sagaway.saga.id": record.id,
                "sagaway.saga.name": record.name,
                "sagaway.saga.version": record.version,
                "sagaway.claim": reason.value,
            },
        )
        self._sagas[record.id] = span

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        parent = self._sagas.get(record.id)
        verb = "step" if ctx.phase is Phase.FORWARD else "compensate"
        span = self._tracer.start_span(
            f"{verb} {ctx.step}",
            context=None if parent is None else self._trace.set_span_in_context(parent),
            attributes={
                "sagaway.saga.id": ctx.saga_id,
                "sagaway.saga.name": ctx.saga_name,
                "sagaway.step": ctx.step,
                "sagaway.step.phase": ctx.phase.value,
                "sagaway.step.attempt": ctx.attempt,
                "sagaway.idempotency_key": ctx.idempotency_key,
            },
        )
        # Current in this task while the action runs: its outgoing calls carry the span.
        token = self._context.attach(self._trace.set_span_in_context(span))
        self._steps[id(ctx)] = (span, token)
        self._attempts[record.id] = span

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        entry = self._steps.pop(id(ctx), None)
        if entry is None:
            return
        span, token = entry
        if self._attempts.get(record.id) is span:
            del self._attempts[record.id]
        try:
            self._context.detach(token)
        except Exception:  # pragma: no cover - another context was attached meanwhile
            log.debug("could not detach the step's trace context", exc_info=True)
        span.set_attribute("sagaway.step.outcome", outcome.value)
        if outcome is not StepOutcome.SUCCEEDED:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()

    def before_dispatch(self, record: SagaRecord, command: Command) -> None:
        # The attempt's span when the command leaves during it (request/response), else the
        # saga's (a command written to the outbox as the saga parks), else whatever is current.
        span = self._attempts.get(record.id) or self._sagas.get(record.id)
        context = None if span is None else self._trace.set_span_in_context(span)
        self._propagate.inject(command.headers, context=context)

    def on_finish(self, record: SagaRecord) -> None:
        span = self._sagas.pop(record.id, None)
        if span is None:
            return
        span.set_attribute("sagaway.saga.status", record.status.value)
        if record.error:
            span.set_attribute("sagaway.saga.error", record.error)
        if record.status.value == "FAILED":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, record.error))
        span.end()

    def on_park(self, record: SagaRecord, reason: str) -> None:
        # The run ends here (the reply may reach another engine): close the saga span.
        span = self._sagas.pop(record.id, None)
        if span is not None:
            span.set_attribute("sagaway.parked", reason)
            span.end()
            self._parked[record.id] = span.get_span_context()
            while len(self._parked) > PARKED_TRACES:
                del self._parked[next(iter(self._parked))]

    def on_release(self, record: SagaRecord, reason: str) -> None:
        span = self._sagas.pop(record.id, None)
        if span is not None:
            span.set_attribute("sagaway.released", reason)
            span.end()
