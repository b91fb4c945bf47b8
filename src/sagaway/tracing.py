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

:func:`inject` writes the current context as W3C ``traceparent``/``tracestate`` into a dict of
headers (HTTP request headers, RabbitMQ message headers), for remote participants.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

from sagaway.context import StepContext
from sagaway.hooks import ClaimReason, Hook, StepOutcome
from sagaway.state import Phase, SagaRecord

__all__ = ["TracingHook", "check_exporters", "inject", "tracing_enabled", "tracing_hook"]

log = logging.getLogger("sagaway.tracing")

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

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        span = self._tracer.start_span(
            f"saga {record.name}",
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
        try:
            self._context.detach(token)
        except Exception:  # pragma: no cover - another context was attached meanwhile
            log.debug("could not detach the step's trace context", exc_info=True)
        span.set_attribute("sagaway.step.outcome", outcome.value)
        if outcome is not StepOutcome.SUCCEEDED:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()

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

    def on_release(self, record: SagaRecord, reason: str) -> None:
        span = self._sagas.pop(record.id, None)
        if span is not None:
            span.set_attribute("sagaway.released", reason)
            span.end()
