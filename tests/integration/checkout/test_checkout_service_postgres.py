"""A service on a PostgreSQL schema of its own (``postgresql://...?schema=inventory``): its
history migrates there, its demo share loads, its commands run through its inbox and its reads
see them."""

from __future__ import annotations

import httpx

from checkout.services.server import create_service_app
from checkout.settings import Settings
from servers import fresh_pg_schema, pg_schema_url


async def test_inventory_service_on_a_postgresql_schema() -> None:
    async with fresh_pg_schema("svc") as schema:
        settings = Settings(database_url=pg_schema_url(schema), demo=True)
        app = create_service_app("inventory", settings, transport="http")
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://inv.test") as c:
                assert (await c.get("/inventory")).json()["inventory"]["product_1"] == 100
                command = {
                    "message_id": "saga1:reserve_inventory:forward",
                    "saga_id": "saga1",
                    "saga_name": "checkout",
                    "step": "reserve_inventory",
                    "phase": "forward",
                    "attempt": 1,
                    "participant": "inventory",
                    "command": "reserve",
                    "payload": {
                        "order_id": "o1",
                        "items": [{"product_id": "product_1", "quantity": 3}],
                    },
                    "forward_key": None,
                    "headers": {},
                }
                headers = {"Idempotency-Key": command["message_id"]}
                for _ in range(2):  # a redelivery: the recorded reply, no second effect
                    reply = await c.post("/saga/commands/reserve", json=command, headers=headers)
                    assert reply.status_code == 200, reply.text
                    assert reply.json()["ok"] is True
                assert (await c.get("/inventory")).json()["inventory"]["product_1"] == 97
                products = {
                    p["product_id"]: p for p in (await c.get("/products")).json()["products"]
                }
                assert products["product_1"]["reserved"] == 3
                assert (await c.get("/totals")).json()["units"]["product_1"] == 100
