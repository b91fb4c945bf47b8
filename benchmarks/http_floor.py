"""The floor under ``http_checkout.py --serve``: the same ``POST /orders`` on FastAPI + uvicorn,
the checkout on in-process dicts, no durability, no saga log.

What the service could not do with less and still be the same HTTP API: uvicorn on uvloop (as
``checkout serve`` runs it), a pydantic body and response model of the same shape, and the four
steps (validate, reserve, pay, ship; undo in reverse when shipping or payment fails) as dict
updates. Anything ``checkout serve`` spends above this is the engine, the saga log, the shop's
database and the service's own code and middleware::

    python benchmarks/http_floor.py --n 5000 --concurrency 32

starts the floor server as a subprocess, drives it with ``http_checkout.py``'s client and mix
(aiohttp, ``wait=10``, the four demo scenarios) and prints a table, then one JSON line.
``http_checkout.py --serve --floor`` runs this floor and the real server in one invocation and
prints the ratio.
"""

# No ``from __future__ import annotations``: FastAPI must see the models defined in build_app.
import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from procs import server_process

HAPPY_STOCK = 10_000_000
HAPPY_BALANCE_CENTS = 10**12


def build_app() -> Any:
    """The floor's ASGI app (imported only in the server process)."""
    from fastapi import FastAPI, HTTPException, Query, Response
    from pydantic import BaseModel, Field

    from checkout.domain import demo

    class Item(BaseModel):
        product_id: str = Field(min_length=1, max_length=64)
        quantity: int = Field(gt=0, le=10_000)

    class OrderRequest(BaseModel):
        customer_id: str = Field(min_length=1, max_length=64)
        items: list[Item] = Field(min_length=1, max_length=100)
        payment_method: str = "card"

    class Money(BaseModel):
        amount: str
        cents: int
        currency: str = "CAD"

    class ItemOut(BaseModel):
        product_id: str
        quantity: int
        unit_price: Money
        line_total: Money

    class StepOut(BaseModel):
        name: str
        status: str
        error: str | None = None

    class OrderOut(BaseModel):
        order_id: str
        customer_id: str
        status: str
        saga_id: str | None
        total: Money
        error: str | None
        items: list[ItemOut]
        payment_method: str
        created_at: datetime
        updated_at: datetime
        saga_status: str | None
        steps: list[StepOut]

    def money(cents: int) -> Money:
        return Money(amount=f"{cents / 100:.2f}", cents=cents)

    # price, stock; balance, ships (user_3's address is the demo's undeliverable one)
    products = {
        p.id: [p.price_cents, HAPPY_STOCK if p.id in ("product_1", "product_2") else p.stock]
        for p in demo.DEMO_PRODUCTS
    }
    accounts = {
        a.id: [
            HAPPY_BALANCE_CENTS if a.id in ("user_1", "user_2") else a.balance_cents,
            a.id != "user_3",
        ]
        for a in demo.DEMO_ACCOUNTS
    }
    orders: dict[str, OrderOut] = {}
    ids = itertools.count(1)
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/orders", status_code=201)
    async def create_order(
        body: OrderRequest, response: Response, wait: float = Query(10.0, ge=0, le=60)
    ) -> OrderOut:
        account = accounts.get(body.customer_id)
        if account is None:
            raise HTTPException(422, f"unknown customer {body.customer_id}")
        lines = []
        for item in body.items:
            product = products.get(item.product_id)
            if product is None:
                raise HTTPException(422, f"unknown product {item.product_id}")
            lines.append((item.product_id, item.quantity, product))
        total = sum(q * p[0] for _, q, p in lines)
        order_id = f"ord_{next(ids):012d}"
        steps = [StepOut(name="validate_order", status="succeeded")]
        error: str | None = None
        done: list[str] = []
        # reserve -> pay -> ship; a failure undoes what was done, newest first
        if any(p[1] < q for _, q, p in lines):
            error = "out of stock"
            steps.append(StepOut(name="reserve_inventory", status="failed", error=error))
        else:
            for _, q, p in lines:
                p[1] -= q
            done.append("reserve_inventory")
            steps.append(StepOut(name="reserve_inventory", status="succeeded"))
            if account[0] < total:
                error = "insufficient funds"
                steps.append(StepOut(name="process_payment", status="failed", error=error))
            else:
                account[0] -= total
                done.append("process_payment")
                steps.append(StepOut(name="process_payment", status="succeeded"))
                if not account[1]:
                    error = "invalid shipping address"
                    steps.append(StepOut(name="ship_order", status="failed", error=error))
                else:
                    steps.append(StepOut(name="ship_order", status="succeeded"))
        if error is not None:
            for name in reversed(done):
                if name == "process_payment":
                    account[0] += total
                else:
                    for _, q, p in lines:
                        p[1] += q
                steps.append(StepOut(name=name, status="compensated"))
        now = datetime.now(UTC)
        order = OrderOut(
            order_id=order_id,
            customer_id=body.customer_id,
            status="failed" if error else "completed",
            saga_id=order_id,
            total=money(total),
            error=error,
            items=[
                ItemOut(
                    product_id=pid,
                    quantity=q,
                    unit_price=money(p[0]),
                    line_total=money(q * p[0]),
                )
                for pid, q, p in lines
            ],
            payment_method=body.payment_method,
            created_at=now,
            updated_at=now,
            saga_status="compensated" if error else "succeeded",
            steps=steps,
        )
        orders[order_id] = order
        response.headers["Location"] = f"/orders/{order_id}"
        return order

    return app


def serve_forever(port: int) -> None:
    """The server process: uvicorn on uvloop, as ``checkout serve`` runs it."""
    import uvicorn
    import uvloop

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    config = uvicorn.Config(
        build_app(), log_config=None, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server.serve(sockets=[sock]))


@contextlib.contextmanager
def floor_server() -> Iterator[tuple[str, int]]:
    """The floor server as a subprocess; yields its URL and pid."""
    here = os.path.dirname(os.path.abspath(__file__))
    argv = [sys.executable, os.path.join(here, "http_floor.py"), "--role=server"]
    with server_process(argv, start_timeout=30) as (url, proc):
        yield url, proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--role", choices=["main", "server"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        serve_forever(args.port)
        return
    from http_checkout import measure, print_result

    with floor_server() as (url, pid):
        result = measure(url, args.n, args.concurrency, args.warmup, pid)
    print_result({"benchmark": "http_floor", **result})


if __name__ == "__main__":
    main()
