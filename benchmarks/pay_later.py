"""Seed 004's pay-later flow: create an order, confirm its payment, until the order completes.

    python benchmarks/pay_later.py --n 60 --concurrency 8 --flow choreography
    python benchmarks/pay_later.py --n 60 --concurrency 8 --flow orchestration
    python benchmarks/pay_later.py --n 60 --concurrency 8 --events rabbitmq --url amqp://...

The checkout app (fresh SQLite file: shop + saga log) runs in this process and is called over
ASGI (no sockets). One round: ``POST /orders/create_order`` (201 once the pending payment
exists), then ``POST /payments/confirm`` (200 once the order completed: in a choreography four
more events, each an outbox row, a relay publish, an inbox claim, and the monitor's write; in an
orchestration a signal and three more saga steps). C clients run at once. Reported: orders/s,
create and confirm latency p50/p99. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from checkout.api import create_app
from checkout.settings import Settings


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'sagaway.db'}"
        settings = Settings(
            database_url=url,
            store_url=url,
            demo=True,
            metrics=False,
            events=args.events,
            rabbitmq_url=args.url,
            log_level="warning",
        )
        app = create_app(settings)
        creates: list[float] = []
        confirms: list[float] = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                todo = iter(range(args.n))

                async def client_loop() -> None:
                    for i in todo:
                        # The demo balances pay for 40 + 20 orders of 20.00 (user_3's address
                        # is undeliverable on purpose).
                        body = {
                            "customer_id": "user_2" if i % 3 == 2 else "user_1",
                            "items": [{"product_id": "product_2", "quantity": 1}],
                            "flow": args.flow,
                        }
                        t0 = time.perf_counter()
                        r = await client.post("/orders/create_order", json=body)
                        assert r.status_code == 201, r.text
                        t1 = time.perf_counter()
                        pid = r.json()["payment_id"]
                        c = await client.post("/payments/confirm", json={"payment_id": pid})
                        assert c.status_code == 200, c.text
                        assert c.json()["order"]["status"] == "completed", c.text
                        t2 = time.perf_counter()
                        creates.append(t1 - t0)
                        confirms.append(t2 - t1)

                start = time.perf_counter()
                await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
                elapsed = time.perf_counter() - start
        return {
            "benchmark": "pay_later",
            "flow": args.flow,
            "events": args.events,
            "n": args.n,
            "concurrency": args.concurrency,
            "orders_per_s": round(args.n / elapsed, 1),
            "create_p50_ms": round(pct(creates, 50), 1),
            "create_p99_ms": round(pct(creates, 99), 1),
            "confirm_to_completed_p50_ms": round(pct(confirms, 50), 1),
            "confirm_to_completed_p99_ms": round(pct(confirms, 99), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=60, help="at most 60 (the demo balances)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--flow", choices=["choreography", "orchestration"], default="choreography")
    parser.add_argument("--events", choices=["inprocess", "rabbitmq"], default="inprocess")
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1/")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
