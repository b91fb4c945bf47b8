"""Retention through the checkout service (issue 14): the operator pins and unpins a saga over
HTTP (``POST``/``DELETE /sagas/{id}/pin``, and the web UI's ``/ui/sagas/{id}/pin``), a pinned
saga shows ``pinned`` in the API and retention keeps it;
an order whose saga was pruned still answers (its row holds the outcome), and its
Idempotency-Key still returns that order instead of charging again."""

from __future__ import annotations

import time

import httpx
import pytest
from e2e_helpers import balances

from checkout.bootstrap import Services
from checkout.settings import Settings
from sagaway.store.base import PruningStore

ITEMS = [{"product_id": "product_1", "quantity": 2}]


async def test_an_order_outlives_its_pruned_saga(
    client: httpx.AsyncClient, services: Services
) -> None:
    headers = {"Idempotency-Key": "keep-me-1"}
    body = {"customer_id": "user_1", "items": ITEMS}
    first = await client.post("/orders", json=body, headers=headers)
    assert first.status_code == 201, first.text
    placed = first.json()
    assert placed["status"] == "completed"
    saga_id = placed["saga_id"]
    other = (await client.post("/orders", json=body)).json()

    store = services.engine.store
    assert isinstance(store, PruningStore)
    await store.set_pinned(other["saga_id"], True)
    shown = (await client.get(f"/sagas/{other['saga_id']}")).json()
    assert shown["pinned"] is True
    assert (await client.get(f"/sagas/{saga_id}")).json()["pinned"] is False
    assert 'data-testid="saga-pinned"' in (await client.get(f"/ui/sagas/{other['saga_id']}")).text
    assert 'data-testid="saga-pinned"' not in (await client.get(f"/ui/sagas/{saga_id}")).text

    cutoff = time.time() + 1  # both finished before it; only the unpinned one goes
    assert await store.prune(
        await store.prunable(finished_before=cutoff, limit=10), finished_before=cutoff
    ) == [saga_id]

    assert (await client.get(f"/sagas/{saga_id}")).status_code == 404
    after = await client.get(f"/orders/{placed['order_id']}")
    assert after.status_code == 200, after.text
    assert after.json()["status"] == "completed"
    again = await client.post("/orders", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["order_id"] == placed["order_id"]
    assert (await balances(client))["user_1"] == 800.0  # two orders charged, the retry not
    assert (await client.get("/sagas")).json()["total"] == 1


async def test_the_operator_pins_and_unpins_over_http(
    client: httpx.AsyncClient, services: Services
) -> None:
    body = {"customer_id": "user_1", "items": ITEMS}
    kept = (await client.post("/orders", json=body)).json()["saga_id"]
    gone = (await client.post("/orders", json=body)).json()["saga_id"]

    pinned = await client.post(f"/sagas/{kept}/pin")
    assert pinned.status_code == 200, pinned.text
    assert (pinned.json()["saga_id"], pinned.json()["pinned"]) == (kept, True)
    assert (await client.post(f"/sagas/{kept}/pin")).json()["pinned"] is True  # again: same
    assert (await client.get(f"/sagas/{kept}")).json()["pinned"] is True
    unpinned = await client.delete(f"/sagas/{gone}/pin")  # never pinned: stays unpinned
    assert (unpinned.status_code, unpinned.json()["pinned"]) == (200, False)

    store = services.engine.store
    assert isinstance(store, PruningStore)
    cutoff = time.time() + 1
    prunable = await store.prunable(finished_before=cutoff, limit=10)
    assert prunable == [gone], "the pinned saga is not a candidate"

    assert (await client.delete(f"/sagas/{kept}/pin")).json()["pinned"] is False
    assert (await client.get(f"/sagas/{kept}")).json()["pinned"] is False
    assert set(await store.prunable(finished_before=cutoff, limit=10)) == {kept, gone}

    # The web UI's routes (JSON for its script), same store.
    ui = await client.post(f"/ui/sagas/{kept}/pin", json={})
    assert ui.status_code == 200, ui.text
    assert ui.json() == {"id": kept, "status": "SUCCEEDED", "pinned": True}
    assert (await client.get(f"/sagas/{kept}")).json()["pinned"] is True
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert (await client.post(f"/ui/sagas/{kept}/pin", headers=form)).status_code == 415
    assert (await client.delete(f"/ui/sagas/{kept}/pin")).json()["pinned"] is False


@pytest.mark.parametrize("path", ["/sagas/no-such-saga/pin", "/ui/sagas/no-such-saga/pin"])
async def test_pinning_an_unknown_saga_is_404(client: httpx.AsyncClient, path: str) -> None:
    for response in (await client.post(path, json={}), await client.delete(path)):
        assert response.status_code == 404, response.text
        assert "no-such-saga" in response.json()["detail"]


def test_the_retention_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAWAY_RETENTION_DAYS", "30")
    assert Settings().retention_days == 30.0
    for bad in ("0", "-1", "inf", "soon"):
        monkeypatch.setenv("SAGAWAY_RETENTION_DAYS", bad)
        with pytest.raises(ValueError, match="retention_days"):
            Settings()
