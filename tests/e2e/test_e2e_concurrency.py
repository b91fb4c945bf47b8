"""200 concurrent orders for the 25 units of product_3: exactly 25 complete, the rest fail with
"Insufficient inventory", and money and stock are conserved."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import update

from checkout.bootstrap import Services
from checkout.db import AccountRow


async def test_200_concurrent_orders_for_25_units(
    client: httpx.AsyncClient, services: Services
) -> None:
    # Enough money for every order, so inventory is the only thing that can run out.
    async with services.db.sessions.begin() as session:
        await session.execute(
            update(AccountRow).where(AccountRow.id == "user_1").values(balance_cents=5_000_000)
        )
    before = await services.participants.shop.totals()

    started = time.perf_counter()
    responses = await asyncio.gather(
        *(
            client.post(
                "/orders",
                params={"wait": 0 if i % 8 == 0 else 30},  # one client in 8 does not wait
                json={"user_id": "user_1", "product_id": "product_3", "quantity": 1},
            )
            for i in range(200)
        )
    )
    elapsed = time.perf_counter() - started

    # 202: not finished within `wait` (a loaded machine); its order is followed to its end.
    assert {r.status_code for r in responses} <= {201, 202}, [r.text for r in responses]
    orders = [await _finished(client, r) for r in responses]
    outcomes = Counter((o["status"], o["error"]) for o in orders)
    assert outcomes == {("completed", None): 25, ("failed", "Insufficient inventory"): 175}
    assert (await client.get("/inventory")).json()["inventory"]["product_3"] == 0
    products = {p["product_id"]: p for p in (await client.get("/products")).json()["products"]}
    assert (products["product_3"]["reserved"], products["product_3"]["shipped"]) == (0, 25)
    balance = (await client.get("/balances")).json()["balances"]["user_1"]
    assert balance == 50_000.0 - 25 * 100.0
    after = await services.participants.shop.totals()
    assert after == before
    # The durable order rows agree with the responses (the listener's writes were awaited).
    rows = await services.participants.orders.list_orders(limit=500)
    assert Counter(o.status for o in rows) == {"completed": 25, "failed": 175}
    assert (await client.get("/sagas", params={"status": "SUCCEEDED"})).json()["total"] == 25
    print(f"200 concurrent orders in {elapsed:.2f} s ({200 / elapsed:.0f} orders/s)")


async def _finished(client: httpx.AsyncClient, placed: httpx.Response) -> dict[str, Any]:
    """The order ``placed`` answered, once it is completed or failed."""
    order: dict[str, Any] = placed.json()
    while order["status"] not in ("completed", "failed"):
        await asyncio.sleep(0.1)  # polling the public API, as a client of a 202 does
        response = await client.get(f"/orders/{order['order_id']}")
        assert response.status_code == 200, response.text
        order = response.json()
    return order
