"""HTTP metrics (request counts and latencies per route) and ``GET /metrics``.

``/metrics`` serves the API's HTTP metrics and the engine's (``sagaway.metrics``: sagas,
steps, commits), in Prometheus' text format. Routes are labelled by their template
(``/orders/{order_id}``), never by the raw path, so the number of series stays bounded;
requests no route matched are ``route="unmatched"``.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter, time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagaway.metrics import PrometheusHook

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = "sagaway_http_requests"
REQUESTS_HELP = "HTTP requests answered, by method, route template and status"
SECONDS = "sagaway_http_request_duration_seconds"
SECONDS_HELP = "HTTP request latency until the response ends (an event stream: its lifetime)"


class _Latency:
    """One (method, route)'s histogram: a count per bucket (not cumulative), the sum, and when
    its first request was answered."""

    __slots__ = ("counts", "created", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(HTTP_BUCKETS) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0
        self.created = time()


class HttpMetrics(Collector):
    """The HTTP series, on a registry of their own (the app's: it outlives restarts of the
    engine within one app, as tests do).

    Counted in plain Python on the event loop and turned into Prometheus families when
    scraped, as ``sagaway.metrics`` does for the engine's: the same series, samples and
    ``_created`` timestamps as prometheus-client's ``Counter`` and ``Histogram``, whose
    ``labels()`` and updates (argument checks, a lock per update) cost ~40k instructions a
    request, as counted."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests: dict[tuple[str, str, int], list[float]] = {}  # [count, created]
        self._latency: dict[tuple[str, str], _Latency] = {}
        self.registry.register(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request answered: its count and its latency, in the series of its labels."""
        counted = self._requests.get((method, route, status))
        if counted is None:
            counted = self._requests[method, route, status] = [0.0, time()]
        counted[0] += 1
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[method, route] = _Latency()
        latency.counts[bisect_left(HTTP_BUCKETS, seconds)] += 1  # le: a bound is its bucket's
        latency.total += seconds

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are this registry's alone

    def collect(self) -> Iterator[Metric]:
        created = _created_series()
        requests = CounterMetricFamily(
            REQUESTS, REQUESTS_HELP, labels=["method", "route", "status"]
        )
        for (method, route, status), (count, since) in list(self._requests.items()):
            requests.add_metric(
                [method, route, str(status)], count, created=since if created else None
            )
        yield requests
        seconds = HistogramMetricFamily(SECONDS, SECONDS_HELP, labels=["method", "route"])
        for (method, route), latency in list(self._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(_BOUNDS, latency.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            seconds.add_metric([method, route], buckets, latency.total)
            if created:
                labels = {"method": method, "route": route}
                seconds.samples.append(Sample(f"{SECONDS}_created", labels, latency.created))
        yield seconds


# The bounds as prometheus-client writes them ("1.0", not "1").
_BOUNDS = (*map(floatToGoString, HTTP_BUCKETS), "+Inf")


def _created_series() -> bool:
    """Whether prometheus-client writes ``_created`` series (``PROMETHEUS_DISABLE_CREATED_SERIES``
    or ``disable_created_metrics()`` turn them off): read from it, so these follow its switch."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


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
