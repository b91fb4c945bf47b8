"""What the HTTP path of one ``POST /orders`` costs in ``checkout serve``'s app, the order itself
left out: the app (same settings as ``checkout_cost.py``) called as ASGI in-process, one request
at a time, with ``CheckoutService.place_order`` answering the view of an order placed for real
beforehand. What is counted is the middlewares, routing, FastAPI's parameters and body,
``order_out`` and the response: no saga, no database, so the count is steady (~0.1%) and a
run under callgrind takes a minute, against a few % of noise and several minutes for a whole
order (``checkout_cost.py``). Only the measured requests are inside ``functools.reduce``::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/h.out python benchmarks/http_path_cost.py --n 300
    grep totals /tmp/h.out        # / 300 = instructions per request

Prints CPU per request as a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkout_cost import _post
from http_checkout import _env, _seed, order_body


def _measure(n: int, warmup: int) -> tuple[float, bytes]:
    from checkout.api import create_app
    from checkout.domain.models import OrderLine
    from checkout.settings import Settings

    app = create_app(Settings(), owner_id="http-path-cost")
    _, body = order_body(11)  # a happy order: 201, four steps, an address
    raw = json.dumps(body).encode()
    with asyncio.Runner() as runner:
        lifespan = app.router.lifespan_context(app)
        runner.run(lifespan.__aenter__())
        try:
            checkout = app.state.services.checkout
            lines = [OrderLine(**item) for item in body["items"]]
            placed = runner.run(checkout.place_order(body["customer_id"], lines, wait=10))

            async def place_order(*args: Any, **kwargs: Any) -> Any:
                return placed

            checkout.place_order = place_order

            async def requests(count: int) -> bytes:
                payload = b""
                for _ in range(count):
                    status, payload = await _post(app, raw)
                    assert status == 201, payload
                return payload

            runner.run(requests(warmup))
            cpu = time.process_time()
            # functools.reduce: a C function around the measured requests only, for
            # callgrind's --toggle-collect.
            answer = functools.reduce(lambda _, __: runner.run(requests(n)), [0, 0])
            cpu = time.process_time() - cpu
        finally:
            runner.run(lifespan.__aexit__(None, None, None))
    return cpu / n, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests to count")
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the saga log lines are checkout_cost.py's business
    with tempfile.TemporaryDirectory() as workdir:
        db_path = Path(workdir) / "sagaway.db"
        _seed(db_path)
        os.environ.update(_env(db_path))
        cpu, answer = _measure(args.n, args.warmup)
    order = json.loads(answer)
    print(f"{'requests':<24}{args.n}")
    print(f"{'CPU per request':<24}{cpu * 1e6:.1f} us")
    print(f"{'answer':<24}{len(answer)} bytes, order {order['status']}")
    result = {"benchmark": "http_path_cost", "n": args.n, "cpu_us_per_request": round(cpu * 1e6, 1)}
    print(json.dumps({**result, "answer_bytes": len(answer), "order_status": order["status"]}))


if __name__ == "__main__":
    main()
