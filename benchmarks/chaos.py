"""Chaos: N orders against the checkout service on PostgreSQL while faults are injected, then
the invariants an operator who must never double-charge a customer cares about.

Topology (as ``tests/integration/test_scale_out.py``, the README's scale-out): one
``checkout serve --no-worker`` API process and ``--workers`` ``checkout worker`` processes on a
fresh database (shop tables and saga log), created for the run and dropped afterwards.

Clients behave as the README asks: every order carries an ``Idempotency-Key``, and a client
that gets no answer (connection refused or reset: the API process died) or a 5xx retries with
the same key until it gets a 201/202. Faults fire as the orders go through (``--faults``, in
order, evenly spread over the run):

* ``kill-worker``: SIGKILL one worker while it drives sagas, restart it with its id;
* ``kill-api``: SIGKILL the API process, restart it on the same port;
* ``terminate``: ``pg_terminate_backend`` of every session of the service's database;
* ``pg-restart``: restart the PostgreSQL server (``--pg-restart-cmd``; only with
  ``--allow-pg-restart``: it cuts every other user of the server off too).

Invariants, checked on the database itself once every order is terminal:

* every order and saga terminal (no saga PENDING / RUNNING / COMPENSATING, none FAILED);
* exactly one order per Idempotency-Key (no retry placed a second one, none lost);
* no effect applied twice: at most one payment, reservation and shipment row per order, in the
  state its outcome implies (a completed order's payment captured for its total);
* money and stock conserved: balances + captured payments constant, every product's
  stock + reserved constant (shipping counts shipped units in its shipped_units), nothing left
  reserved, and each account's balance moved by exactly its completed orders;
* no 5xx after a durable write: no 5xx answered to a request whose order was recorded before
  that answer (the order's ``created_at`` against the answer's time).

Prints a table of the faults and what each cost (client errors and retries until the next
fault, seconds until the next successful order), the invariants, then one JSON line. Exits 1
when an invariant does not hold.

    .venv/bin/python benchmarks/chaos.py --n 600 --concurrency 32 --workers 3
    .venv/bin/python benchmarks/chaos.py --n 60 --faults terminate,kill-worker,kill-api  # CI
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from checkout.domain.demo import DEMO_ACCOUNTS, DEMO_PRODUCTS
from report import latency_ms, print_report

CHECKOUT = [sys.executable, "-m", "checkout.cli"]
FAULTS = ("kill-worker", "kill-api", "terminate", "pg-restart")
# The classic scenarios; user_1 and user_2 also run out of money or stock along the way.
MIX: list[dict[str, Any]] = [
    {"user_id": "user_1", "product_id": "product_1", "quantity": 1},  # completes (for a while)
    {"user_id": "user_2", "product_id": "product_2", "quantity": 2},  # completes (for a while)
    {"user_id": "user_3", "product_id": "product_1", "quantity": 1},  # shipping fails: refund
    {"user_id": "user_2", "product_id": "product_1", "quantity": 500},  # inventory fails
    {"user_id": "user_3", "product_id": "product_3", "quantity": 3},  # payment fails: release
    {"user_id": "user_1", "product_id": "product_3", "quantity": 1},  # completes (for a while)
]


# --------------------------------------------------------------------------- processes


class Process:
    """A ``checkout`` subprocess; its output is kept (the tail is printed on failure)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], ready: str) -> None:
        self.name, self.args, self.env, self.ready = name, args, env, re.compile(ready)
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*CHECKOUT, *self.args],
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, started), daemon=True).start()
        if not started.wait(90):
            raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")

    def _pump(self, proc: subprocess.Popen[str], started: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if self.ready.search(line):
                started.set()

    def tail(self, lines: int = 20) -> str:
        return "".join(self.output[-lines:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def errors(self) -> Counter[str]:
        """ERROR/Traceback lines it logged, by their first words (what went wrong, roughly)."""
        found: Counter[str] = Counter()
        for line in self.output:
            if "ERROR" in line or "Error:" in line:
                found[line.strip()[:90]] += 1
        return found


def connect(url: str, patience: float = 60.0) -> psycopg.Connection[Any]:
    """An autocommit connection for the benchmark's own reads and faults. The server is
    shared: when it has no connection to spare ("too many clients"), wait for one."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    name = f"sagaway_chaos_{uuid.uuid4().hex[:12]}"
    with connect(server) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        with connect(server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- the run


@dataclass
class Attempt:
    key: str
    status: int | None  # None: no answer (refused, reset, timed out)
    at: float  # wall clock when the answer (or the failure) came
    latency: float


@dataclass
class Fault:
    kind: str
    at_order: int
    at: float
    detail: str = ""
    attempts: list[Attempt] = field(default_factory=list)


class Chaos:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            "SAGAWAY_DATABASE_URL": url,
            "SAGAWAY_STORE_URL": url,
            "SAGAWAY_DEMO": "true",
            "SAGAWAY_LEASE_SECONDS": str(args.lease_seconds),
            "SAGAWAY_DB_POOL_SIZE": "3",
            "SAGAWAY_STORE_POOL_SIZE": "2",
            "SAGAWAY_METRICS": "false",
        }
        self.api: Process | None = None
        self.workers: list[Process] = []
        self.attempts: list[Attempt] = []
        self.faults: list[Fault] = []
        self.placed: dict[str, dict[str, Any]] = {}  # key -> the order as first answered
        self.done = 0
        self.advanced = asyncio.Event()
        self.rng = random.Random(args.seed)

    def start(self) -> None:
        self.api = Process(
            "api",
            ["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)],
            self.env,
            r"serving on http://",
        )
        for n in range(self.args.workers):
            owner = f"chaos-worker-{n}"
            self.workers.append(
                Process(
                    owner,
                    ["worker"],
                    {**self.env, "SAGAWAY_WORKER_ID": owner},
                    r"checkout worker \S+ running",
                )
            )

    def stop(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            process.stop()

    # -- clients -------------------------------------------------------------------------

    async def place(self, client: httpx.AsyncClient, n: int) -> None:
        key = f"chaos-{n}-{uuid.uuid4().hex[:8]}"
        body = MIX[n % len(MIX)]
        delay = 0.05
        deadline = time.monotonic() + self.args.client_deadline
        while True:
            sent = time.monotonic()
            status: int | None = None
            data: dict[str, Any] | None = None
            try:
                response = await client.post(
                    "/orders",
                    params={"wait": self.args.wait},
                    json=body,
                    headers={"Idempotency-Key": key},
                )
                status = response.status_code
                if status in (200, 201, 202):
                    data = response.json()
            except httpx.TransportError:
                pass
            attempt = Attempt(key, status, time.time(), time.monotonic() - sent)
            self.attempts.append(attempt)
            if self.faults:
                self.faults[-1].attempts.append(attempt)
            if data is not None:
                self.placed.setdefault(key, data)
                self.done += 1
                self.advanced.set()
                return
            if status is not None and 400 <= status < 500:
                raise RuntimeError(f"order {n}: {status} {response.text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"order {n}: no answer within {self.args.client_deadline} s")
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 1.0)

    async def load(self) -> None:
        gate = asyncio.Semaphore(self.args.concurrency)
        limits = httpx.Limits(max_connections=self.args.concurrency)
        async with httpx.AsyncClient(base_url=self.base, timeout=30, limits=limits) as client:

            async def one(n: int) -> None:
                async with gate:
                    await self.place(client, n)

            await asyncio.gather(*(one(n) for n in range(self.args.n)))

    # -- faults --------------------------------------------------------------------------

    async def inject(self, schedule: list[str]) -> None:
        """Each fault once its share of the orders is answered. A killed process restarts in
        the background while the load and the schedule go on; only a fault that needs that
        very process (the API killed again) waits for its restart."""
        restarts: dict[str, asyncio.Task[None]] = {}
        for i, kind in enumerate(schedule):
            mark = self.args.n * (i + 1) // (len(schedule) + 1)
            while self.done < mark:
                self.advanced.clear()
                await self.advanced.wait()
            if kind == "kill-api" and "api" in restarts:
                await restarts["api"]
            busy = {name for name, task in restarts.items() if not task.done()}
            if kind == "kill-worker" and busy >= {w.name for w in self.workers}:
                await asyncio.wait([restarts[name] for name in busy])
                busy = {name for name, task in restarts.items() if not task.done()}
            fault = Fault(kind, self.done, time.time())
            self.faults.append(fault)
            fault.detail, victim = await asyncio.to_thread(self._fire, kind, busy)
            if victim is not None:
                restarts[victim.name] = asyncio.create_task(asyncio.to_thread(victim.start))
        await asyncio.gather(*restarts.values())

    def _busiest_worker(self, busy: set[str]) -> Process:
        """The running worker holding the most active sagas now (a kill that costs)."""
        with connect(self.url) as conn:
            held = dict(
                conn.execute(
                    "SELECT owner, count(*) FROM sagaway.sagaway_instances"
                    " WHERE status IN ('RUNNING', 'COMPENSATING') GROUP BY owner"
                ).fetchall()
            )
        running = [w for w in self.workers if w.name not in busy]
        return max(running, key=lambda w: (held.get(w.name, 0), self.rng.random()))

    def _fire(self, kind: str, busy: set[str]) -> tuple[str, Process | None]:
        """Inject ``kind``; returns what was hit and the process to restart, if any."""
        if kind == "kill-worker":
            victim = self._busiest_worker(busy)
            victim.kill()  # restarted with the same SAGAWAY_WORKER_ID: takes its sagas back
            return victim.name, victim
        if kind == "kill-api":
            assert self.api is not None
            self.api.kill()
            return f"port {self.port}", self.api
        if kind == "terminate":
            with connect(self.args.server) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (urlsplit(self.url).path.lstrip("/"),),
                ).fetchone()
            return f"{killed[0] if killed else 0} sessions", None
        if kind == "pg-restart":
            subprocess.run(self.args.pg_restart_cmd, shell=True, check=True)
            return "the server", None
        raise ValueError(kind)

    # -- the end -------------------------------------------------------------------------

    def settle(self) -> float:
        """Seconds until every order and saga is terminal (or the deadline passes)."""
        start = time.monotonic()
        while time.monotonic() - start < self.args.settle_deadline:
            with connect(self.url) as conn:
                active = conn.execute(
                    "SELECT (SELECT count(*) FROM orders WHERE status IN ('pending', 'processing'))"
                    " + (SELECT count(*) FROM sagaway.sagaway_instances"
                    "    WHERE status IN ('PENDING', 'RUNNING', 'COMPENSATING'))"
                ).fetchone()
            if active is not None and active[0] == 0:
                break
            time.sleep(0.25)
        return time.monotonic() - start


def check(url: str, attempts: list[Attempt], keys: set[str]) -> dict[str, Any]:
    """The invariants, read from the database; each entry is (holds, detail)."""
    with connect(url) as conn:
        orders = {
            row[0]: row
            for row in conn.execute(
                "SELECT idempotency_key, id, customer_id, status, total_cents, created_at"
                " FROM orders"
            ).fetchall()
        }
        by_id = {row[1]: row for row in orders.values()}
        sagas = Counter(
            dict(
                conn.execute(
                    "SELECT status, count(*) FROM sagaway.sagaway_instances GROUP BY status"
                ).fetchall()
            )
        )
        rows = {
            table: conn.execute(
                f"SELECT order_id, status, amount_cents FROM {table}"
                if table == "payments"
                else f"SELECT order_id, status, 0 FROM {table}"
            ).fetchall()
            for table in ("payments", "inventory_reservations", "shipments")
        }
        balances = dict(conn.execute("SELECT id, balance_cents FROM accounts").fetchall())
        products = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT id, stock, reserved - COALESCE((SELECT quantity FROM shipped_units "
                "WHERE product_id = products.id), 0), COALESCE((SELECT quantity FROM "
                "shipped_units WHERE product_id = products.id), 0) FROM products"
            ).fetchall()
        }
    result: dict[str, tuple[bool, str]] = {}
    statuses = Counter(row[3] for row in orders.values())
    result["all terminal"] = (
        set(statuses) <= {"completed", "failed"}
        and not (set(sagas) & {"PENDING", "RUNNING", "COMPENSATING", "FAILED"}),
        f"orders {dict(statuses)}, sagas {dict(sagas)}",
    )
    result["one order per key"] = (
        set(orders) == keys and len(by_id) == len(keys),
        f"{len(orders)} orders for {len(keys)} keys",
    )
    doubled: list[str] = []
    completed = {oid for oid, row in by_id.items() if row[3] == "completed"}
    live = {"payments": "captured", "inventory_reservations": "reserved", "shipments": "created"}
    for table, table_rows in rows.items():
        per_order = Counter(r[0] for r in table_rows if r[0] is not None)
        doubled += [f"{table}:{oid}" for oid, count in per_order.items() if count > 1]
        for order_id, status, amount in table_rows:
            if order_id is None:
                continue
            if (status == live[table]) != (order_id in completed):
                doubled.append(f"{table}:{order_id}:{status}")
            if table == "payments" and status == "captured" and amount != by_id[order_id][4]:
                doubled.append(f"payment {order_id}: {amount} != {by_id[order_id][4]}")
    result["no effect twice"] = (not doubled, ", ".join(doubled[:5]) or "one row per order")
    captured = sum(r[2] for r in rows["payments"] if r[1] == "captured")
    start_money = sum(a.balance_cents for a in DEMO_ACCOUNTS)
    spent: Counter[str] = Counter()
    for oid in completed:
        spent[by_id[oid][2]] += by_id[oid][4]
    money_ok = sum(balances.values()) + captured == start_money and all(
        balances[a.id] == a.balance_cents - spent[a.id] for a in DEMO_ACCOUNTS
    )
    units_ok = all(sum(products[p.id]) == p.stock and products[p.id][1] == 0 for p in DEMO_PRODUCTS)
    result["money and stock conserved"] = (
        money_ok and units_ok,
        f"money {sum(balances.values()) + captured}/{start_money}, stock "
        + ", ".join(f"{pid} {sum(v)}" for pid, v in sorted(products.items())),
    )
    late: list[str] = []
    for attempt in attempts:
        if attempt.status is not None and attempt.status >= 500:
            row = orders.get(attempt.key)
            if row is not None and _epoch(row[5]) < attempt.at:
                late.append(f"{attempt.status} for {attempt.key}")
    fives = sum(1 for a in attempts if a.status is not None and a.status >= 500)
    result["no 5xx after a durable write"] = (
        not late,
        f"{len(late)} of {fives} 5xx answers came after the order was recorded",
    )
    return {name: {"holds": ok, "detail": detail} for name, (ok, detail) in result.items()}


def _epoch(value: datetime) -> float:
    return value.timestamp()


def cost(fault: Fault, following: float | None) -> dict[str, Any]:
    """What one fault cost its window (until the next fault): failed attempts, the seconds
    until the first order answered after it, the worst latency."""
    failed = [a for a in fault.attempts if a.status is None or a.status >= 300]
    ok = [a for a in fault.attempts if a.status is not None and a.status < 300]
    recovered = min((a.at for a in ok), default=None)
    return {
        "fault": fault.kind,
        "target": fault.detail,
        "at_order": fault.at_order,
        "no_answer": sum(1 for a in failed if a.status is None),
        "5xx": sum(1 for a in failed if a.status is not None and a.status >= 500),
        "answered": len(ok),
        "first_ok_s": None if recovered is None else round(recovered - fault.at, 2),
        "max_latency_s": round(max((a.latency for a in fault.attempts), default=0.0), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="orders to place")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--faults",
        default="terminate,kill-worker,kill-api,terminate,kill-worker",
        help=f"comma-separated, in order, from {', '.join(FAULTS)}",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get(
            "SAGAWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=1.0, help="POST /orders?wait=")
    parser.add_argument("--allow-pg-restart", action="store_true")
    parser.add_argument("--pg-restart-cmd", default="pg_ctlcluster 15 main restart")
    parser.add_argument("--client-deadline", type=float, default=120.0)
    parser.add_argument("--settle-deadline", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--keep-logs", metavar="PREFIX", help="write each process's output")
    args = parser.parse_args()
    schedule = [f for f in args.faults.split(",") if f]
    unknown = [f for f in schedule if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}: choose from {', '.join(FAULTS)}")
    if "pg-restart" in schedule and not args.allow_pg_restart:
        parser.error("pg-restart restarts the whole PostgreSQL server: add --allow-pg-restart")

    with fresh_database(args.server) as url:
        chaos = Chaos(args, url)
        try:
            chaos.start()
            began = time.monotonic()

            async def run() -> None:
                await asyncio.gather(chaos.load(), chaos.inject(schedule))

            asyncio.run(run())
            load_s = time.monotonic() - began
            settle_s = chaos.settle()
            invariants = check(url, chaos.attempts, set(chaos.placed))
        except BaseException:
            for process in [chaos.api, *chaos.workers]:
                if process is not None:
                    print(f"--- {process.name}\n{process.tail()}", file=sys.stderr)
            raise
        finally:
            chaos.stop()

    print(
        f"{'fault':<12} {'target':<16} {'at order':>8} {'no answer':>9} {'5xx':>4} "
        f"{'answered':>8} {'first ok s':>10} {'max lat s':>9}"
    )
    costs = []
    for i, fault in enumerate(chaos.faults):
        row = cost(fault, chaos.faults[i + 1].at if i + 1 < len(chaos.faults) else None)
        costs.append(row)
        print(
            f"{row['fault']:<12} {row['target']:<16} {row['at_order']:>8} {row['no_answer']:>9} "
            f"{row['5xx']:>4} {row['answered']:>8} {row['first_ok_s']!s:>10} "
            f"{row['max_latency_s']:>9}"
        )
    print()
    for name, verdict in invariants.items():
        print(f"{'OK ' if verdict['holds'] else 'BAD'} {name}: {verdict['detail']}")
    print()
    codes = Counter(str(a.status) if a.status is not None else "no answer" for a in chaos.attempts)
    logged: Counter[str] = Counter()
    for process in [chaos.api, *chaos.workers]:
        if process is not None:
            logged.update(process.errors())
    for line, count in logged.most_common(8):
        print(f"logged {count:>4} x {line}")
    if args.keep_logs:
        for process in [chaos.api, *chaos.workers]:
            if process is not None:
                with open(f"{args.keep_logs}-{process.name}.log", "w") as out:
                    out.writelines(process.output)
    holds = all(v["holds"] for v in invariants.values())
    print_report(
        {
            "benchmark": "chaos",
            "orders": args.n,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "faults": len(chaos.faults),
            "attempts": len(chaos.attempts),
            "answers": dict(sorted(codes.items())),
            "load_s": round(load_s, 2),
            "settle_s": round(settle_s, 2),
            **latency_ms([a.latency for a in chaos.attempts if a.status in (200, 201, 202)]),
            "error_log_lines": sum(logged.values()),
            "fault_costs": costs,
            "invariants": {k: v["holds"] for k, v in invariants.items()},
            "ok": holds,
        }
    )
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
