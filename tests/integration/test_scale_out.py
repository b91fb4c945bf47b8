"""Scale-out on PostgreSQL with real processes: one ``checkout serve --no-worker`` API process and
three ``checkout worker`` processes share a fresh database (shop tables and saga log). 500 orders
are posted (``wait=0``), one worker is SIGKILLed while it certainly drives sagas (it runs with
``tests/gated_checkout.py`` holding every charge it makes after the money is taken, so the kill
comes once it holds one, with no timing involved), and then:

* every order ends ``completed`` or ``failed`` (its saga ``SUCCEEDED`` / ``COMPENSATED``);
* money and stock are conserved, and the balance and stock deltas are exactly those of the
  completed orders (a step effect applied twice would show here);
* each saga's history shows one owner at a time: every step or compensation start names the
  engine that ran it, and it is the owner named by the latest ``SAGA_CLAIMED`` before it;
* the killed worker's unfinished sagas were claimed and finished by another worker.

The database is created for the run and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from checkout.domain.demo import DEMO_ACCOUNTS, DEMO_PRODUCTS
from sagaway import EventType, SagaRecord, SagaStatus, open_store
from servers import POSTGRES_URL, postgres_check, require_server

# Five processes and a PostgreSQL database of their own: minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# Each wait's budget (a process ready, the orders posted, every order ended): generous, the
# machine is shared (with parallel test workers, posting the orders alone took over 60 s);
# a correct run needs seconds. The test's own timeout bounds them all.
DEADLINE = 240.0

CHECKOUT = [sys.executable, "-m", "checkout.cli"]
GATED_CHECKOUT = [sys.executable, str(Path(__file__).parents[1] / "gated_checkout.py")]
LEASE_SECONDS = "2"
ORDERS = 500
WORKERS = 3

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
    """A ``checkout`` subprocess whose output is collected; ``ready`` is matched on a line."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        ready: str,
        command: list[str] = CHECKOUT,
    ) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [*command, *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.match = self.wait_for(re.compile(ready))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = DEADLINE) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            found = pattern.search(line)
            if found:
                return found
        raise AssertionError(f"{self.name}: no line matching {pattern.pattern}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "".join(self.output[-lines:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def database_url(name: str) -> str:
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database for the run (shop tables in ``public``, the saga log in ``sagaway``)."""
    require_server("postgresql", postgres_check)
    import psycopg

    name = f"sagaway_scale_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:  # all at once: each stops gracefully
        process.terminate()
    for process in started:
        process.stop()


# --------------------------------------------------------------------------- helpers


def cents(amount: str | float) -> int:
    return round(float(amount) * 100)


async def post_orders(url: str) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=32)
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(32)

        async def post(n: int) -> dict[str, Any]:
            # A client that retries with its Idempotency-Key, as the README asks: a connection
            # dropped under load (seen once with parallel test workers: a ReadError before any
            # answer) is retried, and the key makes the repeat the same order, never a second one.
            # The likely cause, the server's keep-alive close crossing the pool's reuse of an idle
            # connection, is gone with a keep-alive above httpx's (README, "Keep-alive").
            key = {"Idempotency-Key": f"scale-{run}-{n}"}
            async with gate:
                for attempt in range(5):
                    try:
                        response = await client.post(
                            "/orders", params={"wait": 0}, json=MIX[n % len(MIX)], headers=key
                        )
                        break
                    except httpx.TransportError as exc:
                        print(f"order {n}: {exc!r}, retried with its key (attempt {attempt + 1})")
                else:
                    raise AssertionError(f"order {n}: the API never answered")
            assert response.status_code in (201, 202), response.text
            data: dict[str, Any] = response.json()
            return data

        return await asyncio.gather(*(post(n) for n in range(ORDERS)))


def saga_counts(store_url: str) -> tuple[int, Counter[str | None]]:
    """How many sagas exist, and how many active ones each owner holds (straight from the log)."""
    import psycopg

    with psycopg.connect(store_url) as conn:
        rows = conn.execute(
            "SELECT owner, count(*) FILTER (WHERE status IN ('PENDING', 'RUNNING', "
            "'COMPENSATING')), count(*) FROM sagaway.sagaway_instances GROUP BY owner"
        ).fetchall()
    return sum(row[2] for row in rows), Counter({row[0]: row[1] for row in rows})


def all_orders(client: httpx.Client) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = []
    while True:
        page = client.get("/orders", params={"limit": 500, "offset": len(orders)})
        assert page.status_code == 200, page.text
        batch = page.json()["orders"]
        orders.extend(batch)
        if len(batch) < 500:
            return orders


async def histories(store_url: str, saga_ids: list[str]) -> list[SagaRecord]:
    store = open_store(store_url)
    async with store:
        gate = asyncio.Semaphore(8)

        async def one(saga_id: str) -> SagaRecord:
            async with gate:
                return await store.get(saga_id)

        return await asyncio.gather(*(one(i) for i in saga_ids))


STARTS = (EventType.STEP_STARTED, EventType.COMPENSATION_STARTED)
ENDS = (EventType.SAGA_SUCCEEDED, EventType.SAGA_COMPENSATED, EventType.SAGA_FAILED)


def owners_in_turn(record: SagaRecord) -> list[str]:
    """The saga's successive owners, checking that each step start belongs to the current one.

    Ownership begins with a claim (the API-only process records sagas unowned); every
    ``STEP_STARTED`` / ``COMPENSATION_STARTED`` names the engine that ran the attempt and must be
    the owner of the latest claim before it. A start by anyone else would mean two engines ran
    the saga at once (the store fences every write by the lease, so it must never happen)."""
    owners: list[str] = []
    for event in record.history:
        if event.type is EventType.SAGA_CLAIMED:
            assert event.detail, f"saga {record.id}: a claim without an owner"
            owners.append(event.detail)
        elif event.type in STARTS:
            assert owners, f"saga {record.id}: {event.type} before any claim"
            assert event.detail == owners[-1], (
                f"saga {record.id}: {event.type} {event.step} by {event.detail} while "
                f"{owners[-1]} held it: {record.history}"
            )
    return owners


# --------------------------------------------------------------------------- the test


def test_three_workers_one_api_one_worker_killed(
    pg_database: str, processes: list[Process]
) -> None:
    env = {
        "SAGAWAY_DATABASE_URL": pg_database,
        "SAGAWAY_STORE_URL": pg_database,
        "SAGAWAY_DEMO": "true",
        "SAGAWAY_LEASE_SECONDS": LEASE_SECONDS,
    }
    # The API process first: it migrates the shop and the log and loads the demo data.
    api = Process(
        "api",
        ["serve", "--no-worker", "--host", "127.0.0.1", "--port", "0"],
        env,
        r"serving on http://[\d.]+:(\d+)",
    )
    processes.append(api)
    url = f"http://127.0.0.1:{api.match.group(1)}"
    workers = {}
    victim = "scale-worker-0"  # holds every charge it makes: it is killed holding sagas
    for n in range(WORKERS):
        owner = f"scale-worker-{n}"
        gates = {"CRASH_HOLD_CHARGE": "user_1,user_2,user_3"} if owner == victim else {}
        workers[owner] = Process(
            owner,
            ["worker"],
            {**env, "SAGAWAY_WORKER_ID": owner, **gates},
            r"checkout worker \S+ running",
            command=GATED_CHECKOUT if gates else CHECKOUT,
        )
        processes.append(workers[owner])

    def diagnostics() -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes)

    with httpx.Client(base_url=url, timeout=30) as client:
        balances_before = client.get("/balances").json()["balances"]
        assert {k: cents(v) for k, v in balances_before.items()} == {
            a.id: a.balance_cents for a in DEMO_ACCOUNTS
        }

        # Post in the background; kill the victim once it holds a saga inside a charge (the
        # money taken, the step not recorded): another worker must take that saga over after
        # its lease expires, and must not charge again.
        posted: list[list[dict[str, Any]]] = []
        poster = threading.Thread(target=lambda: posted.append(asyncio.run(post_orders(url))))
        poster.start()
        workers[victim].wait_for(re.compile(r"^GATE charge "))
        created, by_owner = saga_counts(pg_database)
        assert by_owner[victim] >= 1, by_owner  # from the log: it holds what it is running
        workers[victim].kill()
        killed_at = time.time()
        print(f"SIGKILLed {victim} with {created} sagas created; active by owner: {by_owner}")
        poster.join(timeout=DEADLINE)
        assert posted, f"posting the orders failed (see the output above)\n{diagnostics()}"
        placed = posted[0]
        assert len({o["order_id"] for o in placed}) == ORDERS

        # Every order ends terminal (the killed worker's sagas once their leases expire).
        deadline = time.monotonic() + DEADLINE
        while True:
            orders = all_orders(client)
            statuses = Counter(o["status"] for o in orders)
            if len(orders) == ORDERS and set(statuses) <= {"completed", "failed"}:
                break
            assert time.monotonic() < deadline, f"{statuses}\n{diagnostics()}"
            time.sleep(0.2)
        for status in ("PENDING", "RUNNING", "COMPENSATING", "FAILED"):
            assert client.get("/sagas", params={"status": status}).json()["total"] == 0, status

        balances_after = client.get("/balances").json()["balances"]
        products = {p["product_id"]: p for p in client.get("/products").json()["products"]}

    # ---- the shop: deltas are exactly those of the completed orders
    by_id = {o["order_id"]: o for o in orders}
    completed = [o for o in orders if o["status"] == "completed"]
    assert 0 < len(completed) < ORDERS
    spent: Counter[str] = Counter()
    sold: Counter[str] = Counter()
    for order in completed:
        spent[order["customer_id"]] += cents(order["total"])
        for item in order["items"]:
            sold[item["product_id"]] += item["quantity"]
    for account in DEMO_ACCOUNTS:
        assert cents(balances_after[account.id]) == account.balance_cents - spent[account.id]
    for product in DEMO_PRODUCTS:
        row = products[product.id]
        assert row["reserved"] == 0, row
        assert row["shipped"] == sold[product.id], row
        assert row["stock"] == product.stock - sold[product.id], row
    check_participant_rows(pg_database, by_id)

    # ---- the saga log: one owner at a time, and the victim's sagas finished by others
    records = asyncio.run(histories(pg_database, [o["saga_id"] for o in orders]))
    taken_over = 0
    owners_seen: Counter[str] = Counter()
    for record in records:
        expected = (
            SagaStatus.SUCCEEDED
            if by_id[order_id_of(record, by_id)]["status"] == "completed"
            else SagaStatus.COMPENSATED
        )
        assert record.status is expected, record
        owners = owners_in_turn(record)
        assert owners, f"saga {record.id} was never claimed by a worker"
        owners_seen.update(set(owners))
        finished = next(e for e in record.history if e.type in ENDS)
        if owners[-1] == victim:
            assert finished.at <= killed_at, f"saga {record.id} finished by the killed worker?"
        if victim in owners and owners[-1] != victim:
            taken_over += 1
    assert taken_over > 0, "the killed worker's sagas were not taken over by another worker"
    assert set(owners_seen) <= set(workers), owners_seen
    print(f"{taken_over} sagas taken over after the SIGKILL; sagas per owner: {owners_seen}")


def order_id_of(record: SagaRecord, by_id: dict[str, dict[str, Any]]) -> str:
    for order_id, order in by_id.items():
        if order["saga_id"] == record.id:
            return order_id
    raise AssertionError(f"saga {record.id} belongs to no order")


def check_participant_rows(store_url: str, orders: dict[str, dict[str, Any]]) -> None:
    """One payment, reservation and shipment row per order at most, in the state its outcome
    implies: a completed order's payment is captured for its total and its shipment created; a
    failed order has no captured payment and no live reservation or shipment."""
    import psycopg

    with psycopg.connect(store_url) as conn:
        tables = {
            table: conn.execute(
                f"SELECT order_id, status, count(*) OVER (PARTITION BY order_id) FROM {table}"
            ).fetchall()
            for table in ("payments", "inventory_reservations", "shipments")
        }
        captured = dict(
            conn.execute(
                "SELECT order_id, amount_cents FROM payments WHERE status = 'captured'"
            ).fetchall()
        )
    for table, rows in tables.items():
        for order_id, status, count in rows:
            assert count == 1, f"{table}: {count} rows for order {order_id}"
            if order_id is None:
                continue
            completed = orders[order_id]["status"] == "completed"
            live = {"payments": "captured", "inventory_reservations": "reserved"}.get(
                table, "created"
            )
            assert (status == live) == completed, (table, order_id, status)
    for order_id, order in orders.items():
        if order["status"] == "completed":
            assert captured.get(order_id) == cents(order["total"]), order
        else:
            assert order_id not in captured, order
