"""Separate services over HTTP with ``SAGAWAY_ADMIN_TOKEN`` set: a saga command reaches a
service only with the token (the gateway's dispatcher sends it), so nobody else on the network
can move money or stock through ``/saga/commands``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
from e2e_helpers import order, serve_in_loop

from checkout.api import create_app
from checkout.services import SERVICES
from checkout.services.server import create_service_app
from checkout.settings import Settings

TOKEN = "a-service-token-long-enough-1234"


async def test_commands_need_the_token_and_the_gateway_sends_it(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        urls: dict[str, str] = {}
        for name in SERVICES:
            own = Settings(
                database_url=f"sqlite:///{tmp_path / name}.db", demo=True, admin_token=TOKEN
            )
            app = create_service_app(name, own, transport="http")
            urls[f"{name}_url"] = await stack.enter_async_context(serve_in_loop(app))
        url = f"sqlite:///{tmp_path / 'sagaway.db'}"
        gateway = create_app(
            Settings(
                database_url=url,
                store_url=url,
                demo=True,
                worker_id="e2e",
                transport="http",
                admin_token=TOKEN,
                **urls,
            )
        )
        await stack.enter_async_context(gateway.router.lifespan_context(gateway))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gw")
        )

        placed = await order(client, user_id="user_1", product_id="product_1", quantity=1)
        assert placed["status"] == "completed", placed

        command = {
            "message_id": "intruder:pay:forward",
            "saga_id": "intruder",
            "saga_name": "checkout",
            "step": "pay",
            "phase": "forward",
            "attempt": 1,
            "participant": "payment",
            "command": "start",
            "payload": {"order_id": "intruder", "user_id": "user_1", "amount_cents": 100},
        }
        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=urls["payment_url"]) as direct:
            before = (await direct.get("/accounts/user_1", headers=admin)).json()
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = await direct.post(
                    "/saga/commands/start",
                    json=command,
                    headers={"Idempotency-Key": command["message_id"], **headers},
                )
                assert refused.status_code == 401, refused.text
                assert "Bearer" in refused.json()["detail"]
            after = (await direct.get("/accounts/user_1", headers=admin)).json()
        assert before["balance_cents"] < 100_000, "the order was paid"
        assert after["balance_cents"] == before["balance_cents"], (
            "the refused commands moved nothing"
        )
