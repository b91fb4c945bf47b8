"""HTTP metrics (request counts and latencies per route) and ``GET /metrics``.

``/metrics`` serves the API's HTTP metrics and the engine's (``sagaway.metrics``: sagas,
steps, commits), in Prometheus' text format. Routes are labelled by their template
(``/orders/{order_id}``), never by the raw path, so the number of series stays bounded;
requests no route matched are ``route="unmatched"``.
"""

from __future__ import annotations

import contextlib
from time import perf_counter
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagaway.metrics import PrometheusHook

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HttpMetrics:
    """The HTTP series, on a registry of their own (the app's: it outlives restarts of the
    engine within one app, as tests do)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sagaway_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "sagaway_http_request_duration_seconds",
            "HTTP request latency until the response ends (an event stream: its lifetime)",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        # The labelled series by their labels, one entry per series the families hold anyway:
        # ``labels()`` validates its arguments and takes the family's lock on every call
        # (~26k instructions a request as counted), so each series is looked up once.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request answered: its count and its latency, in the series of its labels."""
        counted = self._counted.get((method, route, status))
        if counted is None:
            counted = self.requests.labels(method, route, str(status))
            self._counted[method, route, status] = counted
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self._timed[method, route] = self.seconds.labels(method, route)
        counted.inc()
        timed.observe(seconds)


class HttpMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: that costs a task per request and breaks streaming)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router writes the matched route into the scope it was given (this one).
            # The template as the API docs show it: "/orders/{order_id}", without the
            # path convertor ("{order_id:order_id}") a route may declare.
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, perf_counter() - began)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: HTTP requests, sagas, steps, saga-log commits, the process."""
    body = b""
    http: HttpMetrics | None = getattr(request.app.state, "http_metrics", None)
    if http is not None:
        body += generate_latest(http.registry)
    services = getattr(request.app.state, "services", None)
    if services is not None:
        for hook in services.engine.hooks:
            if isinstance(hook, PrometheusHook):
                # The store's gauges (outbox, parked sagas) as of now, not the last scrape.
                with contextlib.suppress(Exception):  # the store down: the last values
                    await hook.refresh()
        body += generate_latest(services.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
