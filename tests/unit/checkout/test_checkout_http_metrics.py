"""The API's HTTP metrics, counted in plain Python (``checkout.api.metrics.HttpMetrics``), are
scraped exactly as prometheus-client's own ``Counter`` and ``Histogram`` would be."""

from __future__ import annotations

import random
import re

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from checkout.api.metrics import (
    HTTP_BUCKETS,
    REQUESTS,
    REQUESTS_HELP,
    SECONDS,
    SECONDS_HELP,
    HttpMetrics,
)


def _without_created_values(text: str) -> str:
    # When a series was created is the one sample the two cannot share.
    return re.sub(r"^(\w+_created\{.*\}) \S+$", r"\1 T", text, flags=re.MULTILINE)


def test_http_metrics_scrape_as_prometheus_clients_counter_and_histogram() -> None:
    registry = CollectorRegistry()
    requests = Counter(REQUESTS, REQUESTS_HELP, ["method", "route", "status"], registry=registry)
    seconds = Histogram(
        SECONDS, SECONDS_HELP, ["method", "route"], buckets=HTTP_BUCKETS, registry=registry
    )
    metrics = HttpMetrics()
    rng = random.Random(7)
    labels = [
        ("POST", "/orders", 201),
        ("POST", "/orders", 202),
        ("GET", "/orders/{order_id}", 200),
        ("DELETE", "unmatched", 405),
    ]
    # Every bound exactly (a value on a bound is in that bound's bucket), below, above.
    values = [*HTTP_BUCKETS, 0.0, 0.0009, 31.0, *(rng.random() * 40 for _ in range(500))]
    for value in values:
        method, route, status = rng.choice(labels)
        requests.labels(method, route, str(status)).inc()
        seconds.labels(method, route).observe(value)
        metrics.observe(method, route, status, value)

    expected = _without_created_values(generate_latest(registry).decode())
    assert _without_created_values(generate_latest(metrics.registry).decode()) == expected
    assert "_created{" in expected
