"""Every engine and HTTP benchmark against its floor, each pair measured in one invocation:
the table of issue 14 (floor, now, ratio per measure), then one JSON line. ``make bench`` runs
it::

    python benchmarks/floors.py [--n 10000] [--http-n 5000] [--concurrency 32] [--skip pg,http]

Measures (each one runs the floor first, then the real thing, one at a time):

* ``memory``: ``engine_throughput.py --store memory:// --floor`` (floor: the sagas on dicts);
* ``sqlite``: ``engine_throughput.py --store sqlite:// --floor`` (floor: ``sqlite_floor.py``);
* ``http``: ``http_checkout.py --serve --floor`` (floor: ``http_floor.py``);
* ``pg``: ``engine_throughput.py --store postgresql://...?schema=bench --fresh --floor``
  (floor: ``pg_floor.py``), skipped when no PostgreSQL answers on ``--pg``.

The ratio is on throughput (sagas or orders per second); the CPU ratio is the floor's CPU per
saga (order) over the engine's, the steadier figure on a shared machine. PostgreSQL's own CPU is
in neither.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

from report import print_floor_table

HERE = os.path.dirname(os.path.abspath(__file__))
PG = "postgresql://postgres@127.0.0.1:5432/postgres?schema=bench"


def last_json(command: list[str]) -> dict[str, Any]:
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=HERE).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def engine_row(measure: str, store: str, args: argparse.Namespace, target: float) -> dict[str, Any]:
    command = [sys.executable, "engine_throughput.py", f"--store={store}", f"--n={args.n}"]
    command += [f"--concurrency={args.concurrency}", "--floor"]
    if store.startswith("postgresql"):
        command.append("--fresh")
    r = last_json(command)
    return {
        "measure": measure,
        "unit": "sagas/s",
        "floor": r["floor_sagas_per_s"],
        "now": r["sagas_per_s"],
        "cpu_unit": "us/saga",
        "floor_cpu": r["floor_cpu_us_per_saga"],
        "now_cpu": r["cpu_us_per_saga"],
        "floor_sys_cpu": r.get("floor_sys_us_per_saga"),
        "now_sys_cpu": r["sys_us_per_saga"],
        "now_p99_ms": r["p99_ms"],
        "floor_p99_ms": r["floor_p99_ms"],
        "target": target,
    }


def http_row(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "http_checkout.py", "--serve", "--floor", f"--n={args.http_n}"]
    command.append(f"--concurrency={args.concurrency}")
    r = last_json(command)
    return {
        "measure": "HTTP checkout, SQLite (http_checkout.py --serve)",
        "unit": "orders/s",
        "floor": r["floor_orders_per_s"],
        "now": r["orders_per_s"],
        "cpu_unit": "ms/order (server)",
        "floor_cpu": r["floor_server_cpu_ms_per_order"],
        "now_cpu": r["server_cpu_ms_per_order"],
        "floor_sys_cpu": r.get("floor_server_sys_cpu_ms_per_order"),
        "now_sys_cpu": r["server_sys_cpu_ms_per_order"],
        "now_p99_ms": r["p99_ms"],
        "floor_p99_ms": r["floor_p99_ms"],
        "target": 0.35,
    }


def pg_up(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2).close()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="sagas per engine measure")
    parser.add_argument("--http-n", type=int, default=5000, help="orders for the HTTP measure")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pg", default=PG, help="PostgreSQL URL (its ?schema= is dropped)")
    parser.add_argument("--skip", default="", help="comma-separated: memory,sqlite,http,pg")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    if "memory" not in skip:
        rows.append(engine_row("engine, memory", "memory://", args, 0.5))
    if "sqlite" not in skip:
        rows.append(engine_row("engine, SQLite, durable", "sqlite://", args, 0.5))
    if "http" not in skip:
        rows.append(http_row(args))
    if "pg" not in skip:
        if pg_up(args.pg):
            rows.append(engine_row("engine, PostgreSQL", args.pg, args, 0.5))
        else:
            print(f"no PostgreSQL at {args.pg}: the pg measure is skipped", file=sys.stderr)
    print_floor_table(rows)


if __name__ == "__main__":
    main()
