"""GET /metrics: the engine's and the API's series after real orders."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the metrics do not depend on the backend


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_metrics_count_orders_steps_and_requests(client: httpx.AsyncClient) -> None:
    ok = await client.post(
        "/orders", json={"user_id": "user_1", "product_id": "product_1", "quantity": 1}
    )
    bad = await client.post(
        "/orders", json={"user_id": "user_3", "product_id": "product_1", "quantity": 10}
    )
    assert (ok.json()["status"], bad.json()["status"]) == ("completed", "failed")
    await client.get(f"/orders/{ok.json()['order_id']}")
    await client.get("/no-such-page")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert value(found, "sagaway_sagas_started_total", saga="checkout") == 2
    finished = "sagaway_sagas_finished_total"
    assert value(found, finished, saga="checkout", status="SUCCEEDED") == 1
    assert value(found, finished, saga="checkout", status="COMPENSATED") == 1
    assert value(found, "sagaway_sagas_in_flight", saga="checkout") == 0
    step = "sagaway_step_duration_seconds_count"
    labels = {"saga": "checkout", "phase": "forward"}
    assert value(found, step, step="process_payment", outcome="failed", **labels) == 1
    assert value(found, step, step="validate_order", outcome="succeeded", **labels) == 2
    undo = {"saga": "checkout", "phase": "compensation", "outcome": "succeeded"}
    assert value(found, step, step="reserve_inventory", **undo) == 1
    commits = value(found, "sagaway_store_commit_seconds_count")
    assert commits is not None
    assert commits > 0
    assert value(found, "sagaway_store_batches_total") is not None  # SQLite group-commits
    assert value(found, "sagaway_outbox_pending") == 0, "read from the store for this scrape"
    requests = "sagaway_http_requests_total"
    assert value(found, requests, method="POST", route="/orders", status="201") == 2
    assert value(found, requests, method="GET", route="/orders/{order_id}", status="200") == 1
    assert value(found, requests, method="GET", route="unmatched", status="404") == 1
    latency = "sagaway_http_request_duration_seconds_count"
    assert value(found, latency, method="POST", route="/orders") == 2
    assert value(found, "process_cpu_seconds_total") is not None
