"""Placing an order leaves no reference cycle behind in the checkout's or the engine's objects.

An object in a cycle is freed only by the cyclic garbage collector, whose passes cost CPU in
proportion to what they find: compiled (mypyc), a closure that another closure of the same
function calls lives in an environment object that refers back to it, a cycle per call
(~13 objects an order, README "Session 17"). The orders here are placed while the collector
saves what it finds (``gc.DEBUG_SAVEALL``) instead of freeing it.

Refused orders (a step failing) are counted on the compiled build only: interpreted, the
business error's traceback holds the group commit's frame and with it the batch, a cycle the
pure build keeps (its frames are objects; the compiled build's are not).
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from compiled_build import COMPILED

OURS = ("checkout.", "sagaway.")
HAPPY = {"customer_id": "user_1", "items": [{"product_id": "product_2", "quantity": 1}]}
NO_STOCK = {"customer_id": "user_1", "items": [{"product_id": "product_3", "quantity": 1000}]}
NO_FUNDS = {"customer_id": "user_3", "items": [{"product_id": "product_1", "quantity": 10}]}


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the objects are the app's, the same on every backend


@pytest.fixture
def saved_garbage(warm: httpx.AsyncClient) -> Iterator[list[object]]:
    gc.collect()
    # Held until the end: what earlier tests left behind (an app's connection, say, that some
    # callback still refers to) then cannot become garbage among the orders' objects.
    alive_before = gc.get_objects()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del alive_before


def ours(objects: list[object]) -> Counter[str]:
    found: Counter[str] = Counter()
    for obj in objects:
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if name.startswith(OURS):
            found[name] += 1
        elif str(getattr(obj, "__module__", "")).startswith(OURS):  # a function, a class
            found[f"{name} {getattr(obj, '__qualname__', '')}"] += 1
    return found


async def place(client: httpx.AsyncClient, body: dict[str, object]) -> str:
    answer = await client.post("/orders?wait=10", json=body)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["status"])


@pytest.fixture
async def warm(client: httpx.AsyncClient) -> httpx.AsyncClient:
    assert await place(client, HAPPY) == "completed"  # caches, first-use objects
    assert await place(client, NO_STOCK) == "failed"
    return client


async def test_orders_leave_no_reference_cycles(
    warm: httpx.AsyncClient, saved_garbage: list[object]
) -> None:
    # (NO_STOCK, NO_FUNDS: refused inside the step's transition, see checkout.sagas._in_step)
    bodies = [HAPPY] * 12 + ([NO_STOCK] * 4 + [NO_FUNDS] * 4 if COMPILED else [])
    outcomes = await asyncio.gather(*(place(warm, body) for body in bodies))
    assert outcomes.count("completed") == 12
    gc.collect()
    assert ours(saved_garbage) == Counter()
