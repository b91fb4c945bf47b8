"""What one ``POST /orders`` costs the checkout's process, without the socket and uvicorn: the
app of ``checkout serve`` (same settings: SQLite, shop and saga log in one file, metrics and
saga log lines on) called as ASGI in-process, ``--concurrency`` orders in flight, the order mix
of ``http_checkout.py`` (``order_body``), each waiting for its saga (``wait=10``). The log lines
go to ``/dev/null`` through the same handler and format as the server's.

Prints CPU per order (noisy on a shared machine) and, as its last line, one JSON object. Counted
in instructions, the app's start-up, the warm-up and the orders are inside ``functools.reduce``
for callgrind's ``--toggle-collect``; run it twice with different ``--n`` and divide the
difference by the difference of ``--n``, which cancels the start-up and warm-up::

    valgrind --tool=callgrind --toggle-collect=functools_reduce --callgrind-out-file=/tmp/c.%p \\
        python benchmarks/checkout_cost.py --n 300
    callgrind_annotate /tmp/c.PID | head -20      # "PROGRAM TOTALS" Ir

Group commit batches depend on timing (the fsync), so under callgrind the counts move by a few
tenths of a percent between runs of the same code; the durable setting is the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The build's training run (tools/pgo_train.py) places its orders through the same ASGI call.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from pgo_train import post_order as _post

from http_checkout import _env, _seed, order_body


async def _orders(app: Any, first: int, n: int, concurrency: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    queue = iter(range(first, first + n))

    async def client() -> None:
        for i in queue:
            scenario, body = order_body(i)
            status, payload = await _post(app, json.dumps(body).encode())
            outcome = json.loads(payload).get("status") if status < 300 else status
            key = f"{scenario}:{outcome}"
            counts[key] = counts.get(key, 0) + 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return counts


async def _run(n: int, warmup: int, concurrency: int) -> dict[str, Any]:
    from checkout.api import create_app
    from checkout.cli import tune_gc_for_serving
    from checkout.settings import Settings

    try:
        from checkout.cli import configure_process_logging as configure
    except ImportError:  # a tree from before it (A/B against an older commit)
        from sagaway.logs import configure_logging

        def configure(settings: Settings, stream: Any = None) -> None:
            configure_logging(settings.log_format, settings.log_level, stream=stream)

    settings = Settings()
    sink = open(os.devnull, "w", buffering=1)  # noqa: SIM115, ASYNC230 - closed below; no I/O
    configure(settings, sink)
    app = create_app(settings, owner_id="checkout-cost")
    try:
        async with app.router.lifespan_context(app):
            tune_gc_for_serving()
            await _orders(app, 0, warmup, concurrency)
            cpu = time.process_time()
            started = time.perf_counter()
            counts = await _orders(app, warmup, n, concurrency)
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - started
    finally:
        sink.close()
    return {
        "n": n,
        "concurrency": concurrency,
        "cpu_ms_per_order": round(cpu / n * 1000, 3),
        "orders_per_s": round(n / wall, 1),
        "outcomes": dict(sorted(counts.items())),
    }


def _serve(n: int, warmup: int, concurrency: int) -> dict[str, Any]:
    from checkout.cli import fast_loop_factory

    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:  # the server's loop
        return runner.run(_run(n, warmup, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="orders to count")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db_path = Path(workdir) / "sagaway.db"
        _seed(db_path)
        os.environ.update(_env(db_path))
        # functools.reduce: a C function around the run, for callgrind's --toggle-collect (the
        # app's start-up is in it too: subtract a run of another length to cancel it).
        result = functools.reduce(
            lambda _, __: _serve(args.n, args.warmup, args.concurrency), [0, 0]
        )
    gc.collect()
    print(
        f"{result['n']} orders, {result['concurrency']} in flight: "
        f"{result['cpu_ms_per_order']} ms CPU/order, {result['orders_per_s']} orders/s",
        file=sys.stderr,
    )
    for outcome, count in result["outcomes"].items():
        print(f"  {outcome:<28} {count}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
