"""A service hung for longer than a step's retries, with the checkout as separate services over
HTTP: the shipping service's port accepts connections but nobody answers (a listening socket no
server serves yet), so every ship attempt times out: uncertain. The saga gives the step up and
compensates it, and its compensation waits for the service. When shipping comes back it works
through its backlog: the late ship commands (sent, timed out, never answered) and the cancels,
oldest first. Whatever lands late, the effect is applied at most once and undone: nothing stays
shipped, nothing is charged, and money and units are conserved across the three services'
databases; the ship command sent again after all that changes nothing either (the inbox has
its recorded answer, or the tombstone the cancel left).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import balances, inventory, serve_in_loop

import checkout.sagas
from checkout.api import create_app
from checkout.domain.demo import demo_total_money_cents, demo_total_units
from checkout.services import SERVICES
from checkout.services.server import create_service_app
from checkout.settings import Settings
from sagaway import RetryPolicy

# The ship step's eight attempts time out for real, then the cancel's: 1 s each here, 0.5 s
# apart at most (the checkout's 5 s, up to 5 s apart, made this one test a minute and a half
# of waiting, and prove nothing more: how long an attempt waits is not what is tested).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
STEP_TIMEOUT = 1.0
STEP_RETRY = RetryPolicy(max_attempts=8, initial_delay=0.1, max_delay=0.5)


@pytest.fixture(autouse=True)
def short_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The saga is built with these (read when the gateway starts)."""
    monkeypatch.setattr(checkout.sagas, "STEP_TIMEOUT", STEP_TIMEOUT)
    monkeypatch.setattr(checkout.sagas, "STEP_RETRY", STEP_RETRY)


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def _order(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get(f"/orders/{order_id}")).json()
    return data


async def _until(client: httpx.AsyncClient, order_id: str, saga_status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        data = await _order(client, order_id)
        if data["saga_status"] == saga_status:
            return data
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.2)  # the saga runs in this loop: yield to it


@contextlib.asynccontextmanager
async def _gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            yield client


async def test_a_service_down_past_the_retries_compensates_and_refuses_the_late_command(
    tmp_path: Path,
) -> None:
    def own(name: str) -> Settings:
        return Settings(database_url=f"sqlite:///{tmp_path / name}.db", demo=True)

    # Shipping's port listens, but no server accepts yet: every call to it times out.
    shipping_sock = socket.socket()
    shipping_sock.bind(("127.0.0.1", 0))
    shipping_sock.listen(128)
    shipping_url = f"http://127.0.0.1:{shipping_sock.getsockname()[1]}"
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            f"{name}_url": await stack.enter_async_context(
                serve_in_loop(create_service_app(name, own(name), transport="http"))
            )
            for name in ("payment", "inventory")
        }
        gateway_db = f"sqlite:///{tmp_path / 'sagaway.db'}"
        settings = Settings(
            database_url=gateway_db,
            store_url=gateway_db,
            demo=True,
            worker_id="e2e-down",
            transport="http",
            shipping_url=shipping_url,
            **urls,
        )
        client = await stack.enter_async_context(_gateway(settings))
        body = {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2}]}
        placed = await client.post("/orders", params={"wait": 0}, json=body)
        assert placed.status_code == 202, placed.text
        order_id, saga_id = placed.json()["order_id"], placed.json()["saga_id"]

        compensating = await _until(client, order_id, "COMPENSATING")
        assert (await balances(client))["user_1"] == 900.0  # charged, not refunded yet
        assert compensating["status"] == "processing"

        # The uncertain ship step is compensated first: its cancel waits for shipping.
        assert [s["status"] for s in compensating["steps"]][-1] == "COMPENSATING"
        # Shipping comes back (its own database, fresh): the compensation gets through.
        shipping_app = create_service_app("shipping", own("shipping"), transport="http")
        await stack.enter_async_context(serve_in_loop(shipping_app, shipping_sock))
        done = await _until(client, order_id, "COMPENSATED")
        assert done["status"] == "failed"
        assert (await balances(client))["user_1"] == 1000.0
        assert (await inventory(client))["product_1"] == 100
        async with httpx.AsyncClient() as reads:  # each service's own invariant, its API
            money = (await reads.get(f"{urls['payment_url']}/totals")).json()["money_cents"]
            units = (await reads.get(f"{urls['inventory_url']}/totals")).json()["units"]
        assert money == demo_total_money_cents()
        assert units == demo_total_units()

        # The ship command, arriving late (a retry still in flight somewhere): refused.
        late = {
            "message_id": f"{saga_id}:ship_order:forward",
            "saga_id": saga_id,
            "saga_name": "checkout",
            "step": "ship_order",
            "phase": "forward",
            "attempt": 9,
            "participant": "shipping",
            "command": "create",
            "payload": {"order_id": order_id, "address": None, "items": body["items"]},
            "forward_key": None,
            "headers": {},
        }
        async with httpx.AsyncClient(base_url=shipping_url) as direct:
            refused = await direct.post(
                "/saga/commands/create",
                json=late,
                headers={"Idempotency-Key": late["message_id"]},
            )
            # 409: the cancel's tombstone; 200: the late command had landed first, and this
            # is its recorded answer (its shipment since cancelled). Never a second effect.
            assert refused.status_code in (200, 409), refused.text
            assert (await direct.get("/shipped")).json() == {"shipped": {}}
            shipments = await direct.get("/shipments", params={"order_id": order_id})
            statuses = [s["status"] for s in shipments.json()["shipments"]]
            assert statuses in ([], ["void"], ["cancelled"]), statuses
        assert SERVICES["shipping"].port == 8003  # the default a real deployment uses
