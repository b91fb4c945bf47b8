"""What the shop's writes for one happy order cost the process, alone and repeatable: the
operations ``checkout serve`` runs inside the saga store's write batches on SQLite (record the
order, attach its saga, reserve, charge, ship, mirror ``completed``), called in a row on one
``sqlite3`` connection wrapped as the store executor wraps its writer, one transaction per
order, no engine, no HTTP. ``checkout_cost.py`` counts a whole order with a few % of noise
(its group commits and periodic loops depend on timing); this one repeats to ~0.1% under
callgrind, so a change to the participants' code (or their compiled build) can be counted::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/s.out python benchmarks/shop_writes_cost.py --n 2000
    # and --n 1000: (difference) / 1000 = instructions per order

Prints CPU per order (noisy on a shared machine) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_checkout import _env, _seed


def _orders(raw: sqlite3.Connection, first: int, n: int) -> None:
    from checkout.dbexec import wrap_sqlite
    from checkout.domain.models import OrderLine, OrderStatus
    from checkout.participants import inventory, orders, payment, shipping

    conn = wrap_sqlite(raw)
    for i in range(first, first + n):
        customer = "user_1" if i % 2 else "user_2"
        items = [OrderLine(product_id="product_1" if i % 3 else "product_2", quantity=1 + i % 2)]
        order_id, saga_id = f"ord_{i:08d}", f"saga_{i:08d}"
        raw.execute("BEGIN IMMEDIATE")
        _, created, validated = orders.record_order(
            conn, order_id, customer, items, None, "card", None, True, checkout=True
        )
        assert created
        assert validated is not None
        orders.attach_saga(conn, order_id, saga_id)
        inventory.reserve(conn, f"{saga_id}:reserve_inventory", order_id, items)
        payment.charge(
            conn, f"{saga_id}:process_payment", order_id, customer, validated.total_cents
        )
        shipping.create_shipment(
            conn, f"{saga_id}:ship_order", order_id, validated.shipping_address, items, None
        )
        orders.mirror_saga(conn, order_id, saga_id, OrderStatus.COMPLETED, None)
        raw.execute("COMMIT")


def _run(db_path: Path, n: int, warmup: int) -> dict[str, Any]:
    raw = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = OFF")  # the writes' CPU, not the disk's fsync
    try:
        _orders(raw, 0, warmup)
        cpu = time.process_time()
        _orders(raw, warmup, n)
        cpu = time.process_time() - cpu
    finally:
        raw.close()
    return {"n": n, "cpu_us_per_order": round(cpu / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="orders to count")
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db_path = Path(workdir) / "sagaway.db"
        _seed(db_path)
        os.environ.update(_env(db_path))
        # functools.reduce: a C function around the run, for callgrind's --toggle-collect.
        result = functools.reduce(lambda _, __: _run(db_path, args.n, args.warmup), [0, 0])
    print(f"{result['n']} orders: {result['cpu_us_per_order']} us CPU/order", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
