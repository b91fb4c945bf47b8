"""HTTP throughput of the checkout service: N ``POST /orders``, C at a time, over real HTTP.

Against a running server::

    python benchmarks/http_checkout.py --url http://127.0.0.1:8000 --n 5000 --concurrency 32

or let the benchmark start ``checkout serve`` itself on a fresh SQLite file in a temporary
directory (shop and saga log in one file, the default layout)::

    python benchmarks/http_checkout.py --serve --n 5000 --concurrency 32

The mix follows the four demo scenarios: ~90% happy path (user_1/user_2 buy 1-2 x product_1 or
product_2), ~4% out of stock (1000 x product_3), ~3% payment failure (user_3 buys 10 x
product_1) and ~3% shipping failure (user_3 buys 1 x product_1: charged, then refunded). With
``--serve`` the benchmark tops up product_1/product_2 stock and user_1/user_2 balances in the
fresh database before the server starts, so the happy path lasts for any N; against the plain
demo data (``--reset`` calls ``POST /reset`` first) stock and money run out after a few dozen
orders and the rest fail at inventory or payment (cheaper sagas: look at the status counts).

Each request waits for its saga (``wait=10``): a 201 is a finished order. Prints a table, then,
as its last line, one JSON object (orders_per_s, p50_ms, p99_ms, n, concurrency, counts).

The client is aiohttp's ``ClientSession`` with a ``TCPConnector(limit=C)``: C keep-alive
connections, and a few hundred microseconds of client CPU per request, so on a small machine the
client leaves the cores to the server under test. ``--client httpx`` uses
``httpx.AsyncClient`` instead (same pool size), which costs several times more CPU per request
and so measures the server lower when client and server share two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from procs import cpu_split, server_process
from report import percentile

HAPPY_STOCK = 10_000_000  # product_1 / product_2 units with --serve
HAPPY_BALANCE_CENTS = 10**12  # user_1 / user_2 with --serve


def order_body(i: int) -> tuple[str, dict[str, Any]]:
    """The i-th order of the mix: (scenario, body). Deterministic, so runs are comparable."""
    slot = i % 100
    if slot < 4:
        return "no_stock", {
            "customer_id": "user_1",
            "items": [{"product_id": "product_3", "quantity": 1000}],
        }
    if slot < 7:
        return "no_funds", {
            "customer_id": "user_3",
            "items": [{"product_id": "product_1", "quantity": 10}],
        }
    if slot < 10:
        return "bad_address", {
            "customer_id": "user_3",
            "items": [{"product_id": "product_1", "quantity": 1}],
        }
    user = "user_1" if i % 2 else "user_2"
    product = "product_1" if i % 3 else "product_2"
    return "happy", {
        "customer_id": user,
        "items": [{"product_id": product, "quantity": 1 + i % 2}],
        "payment_method": "card",
    }


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    http: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)  # "scenario:order status"
    errors: Counter[str] = field(default_factory=Counter)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None  # with --serve (or --server-pid)
    server_sys_cpu_s: float | None = None  # the kernel's part of it


Post = Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]]


@contextlib.asynccontextmanager
async def aiohttp_client(url: str, concurrency: int) -> AsyncIterator[Post]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def post(body: dict[str, Any]) -> tuple[int, Any]:
            async with session.post("/orders", params={"wait": 10}, json=body) as response:
                return response.status, await response.json(content_type=None)

        yield post


@contextlib.asynccontextmanager
async def httpx_client(url: str, concurrency: int) -> AsyncIterator[Post]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=httpx.Timeout(60.0)
    ) as client:

        async def post(body: dict[str, Any]) -> tuple[int, Any]:
            response = await client.post("/orders", params={"wait": 10}, json=body)
            return response.status_code, response.json()

        yield post


CLIENTS = {"aiohttp": aiohttp_client, "httpx": httpx_client}


async def run(
    url: str,
    n: int,
    concurrency: int,
    warmup: int,
    reset: bool,
    client_kind: str,
    server_pid: int | list[int] | None = None,
) -> tuple[Results, float]:
    if reset:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/reset", json={})
            response.raise_for_status()
    async with CLIENTS[client_kind](url, concurrency) as post:
        results = Results()

        async def one(i: int, record: bool) -> None:
            scenario, body = order_body(i)
            started = time.perf_counter()
            try:
                status, payload = await post(body)
            except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError) as exc:
                if record:
                    results.errors[type(exc).__name__] += 1
                return
            elapsed = time.perf_counter() - started
            if not record:
                return
            results.latencies.append(elapsed)
            results.http[str(status)] += 1
            if status in (201, 202) and isinstance(payload, dict):
                results.outcomes[f"{scenario}:{payload.get('status')}"] += 1

        async def drive(indices: Iterator[int], record: bool) -> None:
            for i in indices:
                await one(i, record)

        if warmup:
            shared = iter(range(n, n + warmup))
            await asyncio.gather(*(drive(shared, False) for _ in range(concurrency)))
        shared = iter(range(n))
        server_cpu, client_cpu = cpu_split(server_pid), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(drive(shared, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        results.client_cpu_s = time.process_time() - client_cpu
        if server_pid is not None:
            user, kernel = cpu_split(server_pid)
            results.server_cpu_s = user + kernel - sum(server_cpu)
            results.server_sys_cpu_s = kernel - server_cpu[1]
    return results, elapsed


# --------------------------------------------------------------------------- --serve


def _seed(db_path: Path) -> None:
    """Migrate, load the demo data, then top up what the happy path consumes."""
    env = {**os.environ, **_env(db_path)}
    subprocess.run(
        [sys.executable, "-m", "checkout.cli", "migrate"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    from checkout.domain import demo

    conn = sqlite3.connect(db_path)
    try:
        with conn:
            for p in demo.DEMO_PRODUCTS:
                stock = HAPPY_STOCK if p.id in ("product_1", "product_2") else p.stock
                conn.execute(
                    "INSERT INTO products (id, name, price_cents, stock, reserved) "
                    "VALUES (?, ?, ?, ?, 0)",
                    (p.id, p.name, p.price_cents, stock),
                )
            for a in demo.DEMO_ACCOUNTS:
                balance = HAPPY_BALANCE_CENTS if a.id in ("user_1", "user_2") else a.balance_cents
                address = a.address
                conn.execute(
                    "INSERT INTO accounts (id, name, balance_cents, ship_street, ship_city, "
                    "ship_province, ship_postal_code, ship_country) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        a.id,
                        a.name,
                        balance,
                        address.street,
                        address.city,
                        address.province,
                        address.postal_code,
                        address.country,
                    ),
                )
    finally:
        conn.close()


def _env(db_path: Path) -> dict[str, str]:
    url = f"sqlite:///{db_path}"
    return {
        "SAGAWAY_DATABASE_URL": url,
        "SAGAWAY_STORE_URL": url,
        "SAGAWAY_DEMO": "true",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def serve(workdir: Path) -> Iterator[tuple[str, int]]:
    """A ``checkout serve`` subprocess on a fresh database; yields its URL and pid."""
    db_path = workdir / "sagaway.db"
    _seed(db_path)
    argv = [sys.executable, "-m", "checkout.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    with server_process(argv, env={**os.environ, **_env(db_path)}) as (url, proc):
        print(f"server pid {proc.pid} at {url} on {db_path}", file=sys.stderr)
        yield url, proc.pid


# --------------------------------------------------------------------------- --up


def _children(parent: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(proc.name))
    return found


@contextlib.contextmanager
def up(workdir: Path, transport: str, base_port: int) -> Iterator[tuple[str, list[int]]]:
    """``checkout up --transport ...`` (gateway + three services, each with its own SQLite
    file) in ``workdir``; the happy path's stock and balances topped up in the services'
    databases once they started. Yields the gateway's URL and the four processes' pids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "checkout", "up", "--transport", transport]
    proc = subprocess.Popen(
        [*command, "--base-port", str(base_port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if re.match(r"gateway +\| checkout serving on", line):
                break
        else:
            raise SystemExit("checkout up did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        url = f"http://127.0.0.1:{base_port}"
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            time.sleep(0.05)
        with sqlite3.connect(workdir / "inventory.db") as conn:
            conn.execute(
                "UPDATE products SET stock = ? WHERE id IN ('product_1', 'product_2')",
                (HAPPY_STOCK,),
            )
        with sqlite3.connect(workdir / "payment.db") as conn:
            conn.execute(
                "UPDATE accounts SET balance_cents = ? WHERE id IN ('user_1', 'user_2')",
                (HAPPY_BALANCE_CENTS,),
            )
        pids = _children(proc.pid)
        print(f"checkout up ({transport}) at {url}: pids {pids} in {workdir}", file=sys.stderr)
        yield url, pids
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running checkout server, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--serve", action="store_true", help="start checkout serve on a fresh temporary DB"
    )
    target.add_argument(
        "--up",
        choices=["http", "rabbitmq"],
        help="start `checkout up` (separate services) over this transport in a temporary "
        "directory; server CPU is the four processes'",
    )
    parser.add_argument("--base-port", type=int, default=18000, help="with --up")
    parser.add_argument("--n", type=int, default=5000, help="orders to time")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200, help="orders sent before timing")
    parser.add_argument("--reset", action="store_true", help="POST /reset first (demo mode)")
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="aiohttp",
        help="aiohttp.ClientSession (default: cheap on CPU, leaves the cores to the server), or "
        "httpx.AsyncClient (on a 2-core machine httpx alone needs about a core at a few "
        "hundred requests/s)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="run the client on uvloop (if installed)"
    )
    parser.add_argument(
        "--server-pid", type=int, help="with --url: the server's pid, to report its CPU per order"
    )
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)  # profiling aid

    parser.add_argument(
        "--floor",
        action="store_true",
        help="first run the same load against http_floor.py (FastAPI + uvicorn, the checkout "
        "on dicts) in this invocation and print the ratio",
    )
    args = parser.parse_args()

    floor: dict[str, Any] | None = None
    if args.floor:
        from http_floor import floor_server

        with floor_server() as (floor_url, floor_pid):
            floor = measure(
                floor_url, args.n, args.concurrency, args.warmup, floor_pid, client=args.client
            )
        print(
            f"floor (http_floor.py): {floor['orders_per_s']} orders/s, "
            f"server CPU {floor['server_cpu_ms_per_order']} ms/order",
            file=sys.stderr,
        )
    with contextlib.ExitStack() as stack:
        server_pid: int | list[int] | None
        if args.serve:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url, server_pid = stack.enter_context(serve(workdir))
        elif args.up:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url, server_pid = stack.enter_context(up(workdir, args.up, args.base_port))
        else:
            url, server_pid = args.url, args.server_pid
        if args.hold:
            input("press Enter to start\n")
        result = measure(
            url,
            args.n,
            args.concurrency,
            args.warmup,
            server_pid,
            reset=args.reset,
            client=args.client,
            uvloop=args.uvloop,
        )
    if floor is not None:
        result = with_floor(result, floor)
    print_result(result)


def measure(
    url: str,
    n: int,
    concurrency: int,
    warmup: int,
    server_pid: int | list[int] | None,
    *,
    reset: bool = False,
    client: str = "aiohttp",
    uvloop: bool = False,
) -> dict[str, Any]:
    """One timed run against ``url``: the result as ``print_result`` prints it."""
    factory = None
    if uvloop:
        import uvloop as uvloop_module

        factory = uvloop_module.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results, elapsed = runner.run(run(url, n, concurrency, warmup, reset, client, server_pid))
    done = len(results.latencies)
    server_ms = server_sys_ms = None
    if results.server_cpu_s is not None and done:
        server_ms = round(results.server_cpu_s / done * 1000, 3)
    if results.server_sys_cpu_s is not None and done:
        server_sys_ms = round(results.server_sys_cpu_s / done * 1000, 3)
    return {
        "orders_per_s": round(done / elapsed if elapsed > 0 else 0.0, 1),
        "p50_ms": round(percentile(results.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(results.latencies, 0.99) * 1000, 2),
        "n": done,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "client": client,
        "server_cpu_ms_per_order": server_ms,
        "server_sys_cpu_ms_per_order": server_sys_ms,
        "client_cpu_ms_per_order": round(results.client_cpu_s / done * 1000, 3) if done else None,
        "http": dict(sorted(results.http.items())),
        "outcomes": dict(sorted(results.outcomes.items())),
        "errors": dict(results.errors),
    }


def with_floor(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``result`` with the floor's figures and the ratios (orders/s, and server CPU per order:
    the floor's over this one's, so 1.0 is as cheap as the floor)."""
    server_ms, floor_ms = result["server_cpu_ms_per_order"], floor["server_cpu_ms_per_order"]
    return {
        **result,
        "floor_orders_per_s": floor["orders_per_s"],
        "floor_p99_ms": floor["p99_ms"],
        "floor_server_cpu_ms_per_order": floor_ms,
        "floor_server_sys_cpu_ms_per_order": floor.get("server_sys_cpu_ms_per_order"),
        "ratio": round(result["orders_per_s"] / floor["orders_per_s"], 3),
        "cpu_ratio": round(floor_ms / server_ms, 3) if server_ms and floor_ms else None,
    }


def print_result(result: dict[str, Any]) -> None:
    print(
        f"{'orders':>10} {'concurrency':>12} {'seconds':>9} {'orders/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8}"
    )
    print(
        f"{result['n']:>10} {result['concurrency']:>12} {result['seconds']:>9.2f} "
        f"{result['orders_per_s']:>10.1f} {result['p50_ms']:>8.1f} {result['p99_ms']:>8.1f}"
    )
    if result["server_cpu_ms_per_order"] is not None:
        print(
            f"server CPU {result['server_cpu_ms_per_order']} ms/order "
            f"(kernel {result['server_sys_cpu_ms_per_order']})",
            end="; ",
        )
    print(f"client CPU {result['client_cpu_ms_per_order']} ms/order ({result['client']})")
    if "floor_orders_per_s" in result:
        print(
            f"floor (http_floor.py, same run): {result['floor_orders_per_s']} orders/s, "
            f"server CPU {result['floor_server_cpu_ms_per_order']} ms/order; "
            f"ratio {result['ratio']} (orders/s), {result['cpu_ratio']} (server CPU)"
        )
    for key, count in result["outcomes"].items():
        print(f"  {key:<28} {count}")
    for key, count in result["errors"].items():
        print(f"  error {key:<22} {count}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
