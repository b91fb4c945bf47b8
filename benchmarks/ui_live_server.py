"""The server of ``ui_live_cost.py --orders inprocess``: ``checkout serve``'s application (the
same ``create_app``, settings, uvicorn and loop as ``checkout serve``, API + engine, demo mode,
SQLite), plus an order source inside the server process, so the order rate is not capped by an
HTTP load generator sharing the machine's two cores.

``POST /_bench/orders?first=&rate=&seconds=&max_in_flight=`` places orders at ``rate`` per
second for ``seconds`` (open loop: order i at ``start + i / rate``, at most ``max_in_flight``
at once), each through the code path of ``POST /orders`` after the HTTP layer: the request body
validated into ``OrderRequest`` and ``checkout.api.routes.orders.place`` (the order row, the
saga, waiting for it up to 10 s; one order in ``FOLLOWED_EVERY`` with ``wait=0``, its saga id
written to the file descriptor given as the first argument, for a saga page to follow), then
the route's ``order_out`` view. Not done per order: accepting a connection, parsing the HTTP
request, encoding the JSON response. It answers ``{"orders", "seconds", "errors"}`` when every
order placed has returned.

    python benchmarks/ui_live_server.py <fd for followed saga ids>   # started by ui_live_cost.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from typing import Any

from fastapi import Request

from checkout.api import create_app
from checkout.api.deps import checkout_of
from checkout.api.routes.orders import place
from checkout.api.schemas import OrderRequest
from checkout.api.views import order_out
from checkout.bootstrap import Role, server_owner_id
from checkout.cli import bind, load_settings, run_server
from http_checkout import order_body
from procs import paced

FOLLOWED_EVERY = 20  # as ui_live_cost.py: one order in 20 is followed by a saga page


def main() -> None:
    ids_fd = int(sys.argv[1])
    settings = load_settings(host="127.0.0.1", port=0)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    application = create_app(settings, role=Role.ALL, owner_id=server_owner_id(port))

    async def place_orders(request: Request) -> dict[str, Any]:
        query = request.query_params
        first, rate = int(query["first"]), float(query["rate"])
        seconds, max_in_flight = float(query["seconds"]), int(query["max_in_flight"])
        checkout = checkout_of(request)
        slots = asyncio.Semaphore(max_in_flight)
        errors: Counter[str] = Counter()
        done = 0

        async def order(i: int) -> None:
            nonlocal done
            _, body = order_body(i)
            followed = i % FOLLOWED_EVERY == 0
            try:
                view, _ = await place(
                    checkout, OrderRequest.model_validate(body), None, 0 if followed else 10
                )
                out = order_out(view)
                done += 1
                if followed and out.saga_id:
                    os.write(ids_fd, f"{out.saga_id}\n".encode())
            except Exception as exc:  # counted and reported: the run goes on
                errors[type(exc).__name__] += 1
            finally:
                slots.release()

        took = await paced(order, first=first, rate=rate, seconds=seconds, slots=slots)
        return {"orders": done, "seconds": took, "errors": errors}

    application.add_api_route("/_bench/orders", place_orders, methods=["POST"])
    base = f"http://127.0.0.1:{port}"
    where = {"ui": f"{base}/", "docs": f"{base}/docs", "metrics": f"{base}/metrics"}
    run_server(application, sock, settings, "warning", f"checkout serving on {base}", where)


if __name__ == "__main__":
    main()
