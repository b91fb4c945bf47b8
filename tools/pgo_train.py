"""The training run of the profile-guided compiled build (hatch_build.py, README "Compiled build").

Run by the build hook on the instrumented extensions (``PYTHONPATH`` = a copy of ``src`` with
them next to their ``.py``): whatever code this runs, gcc lays out and optimises as hot in the
final build; what it does not run stays optimised as without a profile
(``-fprofile-partial-training``). So it runs what a deployment runs, in shapes the benchmarks
do not pin: sagas that succeed, compensate, retry a step, park on a wait and take a signal,
with several sagas in flight, on the memory and the SQLite stores; then checkout orders (the
service's app, in this process, through ASGI: happy, out of stock, refused payment, bad
address). Not the benchmarks themselves: a build tuned to the measuring scripts would flatter
them. It exits non-zero when the compiled modules are not the ones loaded (the profile would
be empty and the build would go on as if trained).

    PYTHONPATH=<src with the instrumented extensions> python tools/pgo_train.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sagaway import Engine, RetryPolicy, Saga, StepContext, StepFailed
from sagaway.errors import NotWaiting

# A module of each compiled group's side: the engine's and the shop's.
MUST_BE_COMPILED = ("sagaway.engine", "sagaway.store._sqlite_batch", "checkout.participants.orders")


class Order(BaseModel):
    order_id: int
    amount_cents: int
    items: list[str]


class Flaky(Exception):
    """A step's transient failure: retried by its RetryPolicy."""


def training_sagas() -> list[Saga]:
    quick_retry = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)
    checkout = Saga("pgo_checkout", version=1)
    effects: dict[str, int] = {}

    @checkout.step(retry=quick_retry, timeout=5.0)
    async def reserve(ctx: StepContext, order: Order) -> list[str]:
        effects[ctx.idempotency_key] = order.order_id
        return order.items

    @reserve.compensation
    async def release(ctx: StepContext, order: Order, reserved: list[str] | None) -> None:
        effects.pop(ctx.idempotency_key, None)

    @checkout.step(retry=quick_retry)
    async def charge(ctx: StepContext, order: Order) -> dict[str, int]:
        if order.order_id % 7 == 3 and ctx.attempt == 1:
            raise Flaky("gateway timeout")  # retried, then succeeds
        return {"charged": order.amount_cents}

    @charge.compensation
    async def refund(ctx: StepContext, order: Order, charged: dict[str, int] | None) -> None:
        return None

    @checkout.step
    async def ship(ctx: StepContext, order: Order) -> str:
        if order.order_id % 10 == 9:
            raise StepFailed("no such address")  # compensates refund, release
        return f"parcel-{order.order_id}"

    confirmed = Saga("pgo_confirmed", version=1)

    @confirmed.step
    async def hold(ctx: StepContext, order: Order) -> int:
        return order.amount_cents

    @hold.compensation
    async def unhold(ctx: StepContext, order: Order, held: int | None) -> None:
        return None

    confirmed.wait("confirmed", timeout=60, reply=int)

    @confirmed.step
    async def capture(ctx: StepContext, order: Order) -> None:
        return None

    return [checkout, confirmed]


async def run_sagas(url: str, count: int) -> dict[str, int]:
    checkout, confirmed = training_sagas()
    outcomes: dict[str, int] = {}
    orders = iter(range(count))

    async def client() -> None:
        for i in orders:
            order = Order(
                order_id=i, amount_cents=100 + i % 900, items=[f"sku-{i % 13}"] * (1 + i % 3)
            )
            if i % 8 == 5:
                saga_id = await engine.start(confirmed, order)
                while True:  # parked once its first step is done; signal it then
                    try:
                        await engine.signal(saga_id, "confirmed", i, signal_id=f"s-{i}")
                        break
                    except NotWaiting:
                        await asyncio.sleep(0.001)
            else:
                saga_id = await engine.start(checkout, order, idempotency_key=f"order-{i}")
            record = await engine.wait(saga_id, timeout=30)
            outcomes[str(record.status)] = outcomes.get(str(record.status), 0) + 1
            if i % 50 == 0:
                await engine.get(saga_id)

    engine = Engine(url, sagas=[checkout, confirmed], owner_id="pgo-train")
    async with engine:
        await asyncio.gather(*(client() for _ in range(16)))
    return outcomes


async def post_order(app: Any, body: bytes) -> tuple[int, bytes]:
    """One ``POST /orders?wait=10`` through the ASGI interface, as a server would call it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"wait=10",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    received = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def order_body(i: int) -> dict[str, Any]:
    """Mostly orders that go through; some out of stock, refused, or undeliverable (user_3's
    address, the demo data's), which compensate."""
    slot = i % 20
    if slot == 1:
        return {"customer_id": "user_1", "items": [{"product_id": "product_3", "quantity": 1000}]}
    if slot == 2:
        return {"customer_id": "user_3", "items": [{"product_id": "product_1", "quantity": 10}]}
    if slot == 3:
        return {"customer_id": "user_3", "items": [{"product_id": "product_1", "quantity": 1}]}
    items = [{"product_id": "product_1" if i % 3 else "product_2", "quantity": 1 + i % 2}]
    if i % 5 == 0:
        items.append({"product_id": "product_2", "quantity": 1})
    return {"customer_id": "user_1" if i % 2 else "user_2", "items": items}


async def run_orders(db_path: Path, count: int) -> dict[str, int]:
    from checkout.api import create_app
    from checkout.cli import configure_process_logging
    from checkout.settings import Settings

    settings = Settings()
    # The server's saga log lines, formatted as it does, into nothing.
    sink = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - closed below; no I/O
    configure_process_logging(settings, sink)
    app = create_app(settings, owner_id="pgo-train")
    outcomes: dict[str, int] = {}
    orders = iter(range(count))

    async def client() -> None:
        for i in orders:
            status, payload = await post_order(app, json.dumps(order_body(i)).encode())
            outcome = json.loads(payload).get("status") if status < 300 else str(status)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async with app.router.lifespan_context(app):
        # The demo data's stock and balances would run out: every later order refused.
        with sqlite3.connect(db_path) as conn:
            conn.execute(
                "UPDATE products SET stock = 1000000 WHERE id IN ('product_1', 'product_2')"
            )
            conn.execute(
                "UPDATE accounts SET balance_cents = 10000000000 WHERE id IN ('user_1', 'user_2')"
            )
        conn.close()
        try:
            await asyncio.gather(*(client() for _ in range(16)))
        finally:
            sink.close()
    return outcomes


def serve_orders(db_path: Path, count: int) -> dict[str, int]:
    from checkout.cli import fast_loop_factory

    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:  # the server's loop
        return runner.run(run_orders(db_path, count))


def check_compiled() -> None:
    for name in MUST_BE_COMPILED:
        path = importlib.import_module(name).__file__ or ""
        if not path.endswith(".so"):
            sys.exit(f"pgo_train: {name} is not the compiled module ({path}): no profile to train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="times the default work")
    args = parser.parse_args()
    check_compiled()
    with tempfile.TemporaryDirectory(prefix="sagaway-pgo-train-") as workdir:
        db_path = Path(workdir) / "sagaway.db"
        os.environ.update(
            SAGAWAY_DATABASE_URL=f"sqlite:///{db_path}",
            SAGAWAY_STORE_URL=f"sqlite:///{db_path}",
            SAGAWAY_DEMO="true",
        )
        runs = {
            "memory": asyncio.run(run_sagas("memory://", int(6000 * args.scale))),
            "sqlite": asyncio.run(
                run_sagas(f"sqlite:///{Path(workdir) / 'sagas.db'}", int(3000 * args.scale))
            ),
            "orders": serve_orders(db_path, int(800 * args.scale)),
        }
    print(json.dumps(runs, sort_keys=True))


if __name__ == "__main__":
    main()
