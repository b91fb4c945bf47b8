"""The library router's signal endpoints (``POST {prefix}/sagas/{id}/signals/{name}``,
``GET {prefix}/waiting.json``) over an engine on the memory store: 202 with a receipt, the
same signal id twice counts once, 404/409/415/422 with messages."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from sagaway import Engine, Saga, SagaStatus, StepContext
from sagaway.web import saga_ui_router

saga = Saga("web-signal")


@saga.step
async def reserve(ctx: StepContext, data: dict[str, int]) -> int:
    return data["n"]


saga.wait("payment_confirmed", timeout=900)

JSON = {"content-type": "application/json"}
Client = tuple[httpx.AsyncClient, Engine, str]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with Engine("memory://", sagas=[saga], recovery_interval=3600) as engine:
        app = FastAPI()
        app.include_router(saga_ui_router(engine))
        saga_id = await engine.start(saga, {"n": 1})
        for _ in range(500):
            if (await engine.store.get(saga_id, history=False)).waiting_for is not None:
                break
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http, engine, saga_id


async def test_signal_is_applied_once_and_listed_before(client: Client) -> None:
    http, engine, saga_id = client
    listed = await http.get("/ui/waiting.json", params={"for": "signal:payment_confirmed"})
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["sagas"]] == [saga_id]
    url = f"/ui/sagas/{saga_id}/signals/payment_confirmed"
    body = {"payload": {"by": "alice"}, "signal_id": "evt-1"}
    first = await http.post(url, json=body)
    assert first.status_code == 202, first.text
    assert first.json() == {
        "saga_id": saga_id,
        "name": "payment_confirmed",
        "signal_id": "evt-1",
        "duplicate": False,
    }
    record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("payment_confirmed") == {"by": "alice"}
    again = await http.post(url, json=body)
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    late = await http.post(url, json={"signal_id": "evt-2"})
    assert late.status_code == 409
    assert "SUCCEEDED" in late.json()["detail"]


async def test_refusals_are_4xx_with_messages(client: Client) -> None:
    http, _engine, saga_id = client
    wrong = await http.post(f"/ui/sagas/{saga_id}/signals/payment_cancelled", json={})
    assert wrong.status_code == 409
    assert "waits for signal:payment_confirmed" in wrong.json()["detail"]
    missing = await http.post("/ui/sagas/nope/signals/payment_confirmed", json={})
    assert missing.status_code == 404
    url = f"/ui/sagas/{saga_id}/signals/payment_confirmed"
    form = await http.post(url, data={"payload": "x"})
    assert form.status_code == 415, "a cross-site form cannot deliver signals"
    bad = await http.post(url, content=b"{nope", headers=JSON)
    assert bad.status_code == 422
    assert "not JSON" in bad.json()["detail"]
    extra = await http.post(url, json={"payload": 1, "colour": "red"})
    assert extra.status_code == 422
