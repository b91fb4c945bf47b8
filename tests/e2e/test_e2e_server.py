"""Real ``checkout serve`` processes over real HTTP: one order, and a SIGKILL with 100 orders in
flight, some of them held inside a charge or a refund (``tests/gated_checkout.py``), followed by a
restart: every saga ends as its order says, and each customer's balance and each product's stock
moved by exactly what their completed orders took."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from checkout.db import open_database
from checkout.domain.demo import (
    DEMO_ACCOUNTS,
    DEMO_PRODUCTS,
    demo_total_money_cents,
    demo_total_units,
)
from checkout.participants import CheckoutParticipants

SERVE = [sys.executable, "-m", "checkout.cli", "serve", "--host", "127.0.0.1"]
GATED_SERVE = [sys.executable, str(Path(__file__).parents[1] / "gated_checkout.py")]
GATED_SERVE += SERVE[3:]
READY = re.compile(r"serving on http://([\d.]+):(\d+)")


class Server:
    """A ``checkout serve`` subprocess on a free loopback port."""

    def __init__(
        self,
        db_path: Path,
        port: int = 0,
        command: list[str] = SERVE,
        env: dict[str, str] | None = None,
    ) -> None:
        url = f"sqlite:///{db_path}"
        env_vars = {
            **os.environ,
            "SAGAWAY_DATABASE_URL": url,
            "SAGAWAY_STORE_URL": url,
            "SAGAWAY_DEMO": "true",
            "SAGAWAY_WORKER_ID": "e2e-server",  # a restart takes its sagas back at once
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env_vars,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = self._wait_for_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_healthy()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_for_port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = READY.search(line)
            if match:
                return int(match.group(2))
        raise AssertionError(f"server did not start: {''.join(self.output)}")

    def _wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        # One client for the whole wait: a new one per poll (httpx.get) costs ~50 ms of CPU.
        with httpx.Client(timeout=1) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, "".join(self.output)
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"server never became healthy: {''.join(self.output)}")

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """The next output line matching ``pattern`` (AssertionError if the server exits or
        none comes within ``timeout``: a bound on a hang, not a timing assumption)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}: {''.join(self.output)}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def start(port: int = 0, **kwargs: Any) -> Server:
        server = Server(tmp_path / "sagaway.db", port, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def _totals(db_path: Path) -> tuple[int, dict[str, int]]:
    db = open_database(f"sqlite:///{db_path}")
    try:
        totals = await CheckoutParticipants.from_database(db).shop.totals()
        return totals.money_cents, totals.units
    finally:
        await db.dispose()


def test_checkout_serve_places_an_order_over_http(server_factory: Any) -> None:
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/orders",
            json={"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2}]},
            headers={"Idempotency-Key": "real-http-1"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "completed"
        assert client.get("/balances").json()["balances"]["user_1"] == 900.0
        assert client.get("/inventory").json()["inventory"]["product_1"] == 98
        too_big = client.post(
            "/orders", content=b"x" * 200_000, headers={"Content-Type": "application/json"}
        )
        assert too_big.status_code == 413
        # Through uvicorn too: HEAD is GET without a body; the docs' assets are served.
        head = client.head("/health")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) == len(client.get("/health").content)
        root = client.head("/", follow_redirects=False)  # the shop page
        assert (root.status_code, root.content) == (200, b"")
        assert client.get("/docs").status_code == 200
        assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert server.stop() == 0


# A mix of outcomes: completed, shipping fails (refund), inventory fails, payment fails.
MIX = [
    {"user_id": "user_1", "product_id": "product_1", "quantity": 1},
    {"user_id": "user_2", "product_id": "product_2", "quantity": 2},
    {"user_id": "user_3", "product_id": "product_1", "quantity": 1},  # undeliverable: refund
    {"user_id": "user_2", "product_id": "product_1", "quantity": 500},  # out of stock
    {"user_id": "user_1", "product_id": "product_3", "quantity": 3},  # until user_1 runs dry
]
PRICES = {p.id: p.price_cents for p in DEMO_PRODUCTS}


def _log_statuses(db_path: Path) -> Counter[str]:
    with sqlite3.connect(db_path) as log:
        return Counter(s for (s,) in log.execute("SELECT status FROM sagaway_instances"))


@pytest.mark.slow
def test_sigkill_with_orders_in_flight_then_restart(server_factory: Any, tmp_path: Path) -> None:
    # user_2's charges and user_3's refunds are held after their effect until the SIGKILL, so
    # at the kill some sagas are certainly RUNNING (money taken, not recorded) and some
    # COMPENSATING (money given back, not recorded): the restart must neither charge user_2
    # twice nor refund user_3 twice, nor lose either.
    held = {"CRASH_HOLD_CHARGE": "user_2", "CRASH_HOLD_REFUND": "user_3"}
    server = server_factory(command=GATED_SERVE, env=held)

    async def place_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/orders",
                        params={"wait": 0},
                        json=MIX[n % len(MIX)],
                        headers={"Idempotency-Key": f"crash-{n}"},
                    )
                    for n in range(100)
                )
            )

    responses = asyncio.run(place_all())
    assert {r.status_code for r in responses} <= {201, 202}, [r.text for r in responses]
    server.wait_for(r"^GATE charge user_2 ")  # a charge applied and held
    server.wait_for(r"^GATE refund user_3 ")  # a refund applied and held
    server.kill()

    at_kill = _log_statuses(tmp_path / "sagaway.db")
    assert at_kill["RUNNING"] >= 1, at_kill
    assert at_kill["COMPENSATING"] >= 1, at_kill
    assert sum(at_kill.values()) == 100, at_kill

    restarted = server_factory()  # a fresh port: nothing assumes the old one is free again
    with httpx.Client(base_url=restarted.url, timeout=60) as client:
        # Re-placing an order with its key answers with that order, after waiting (server
        # side) for its saga to end: the synchronisation, without polling.
        final = []
        for n in range(100):
            replay = client.post(
                "/orders",
                params={"wait": 30},
                json=MIX[n % len(MIX)],
                headers={"Idempotency-Key": f"crash-{n}"},
            )
            assert replay.status_code == 201, replay.text  # 201: finished; 202: still running
            final.append(replay)
        orders = [r.json() for r in final]
        assert [o["order_id"] for o in orders] == [r.json()["order_id"] for r in responses]
        for order in orders:
            expected = {"completed": "SUCCEEDED", "failed": "COMPENSATED"}.get(order["status"])
            assert order["saga_status"] == expected, order
        balances = client.get("/balances").json()["balances"]
        inventory = client.get("/inventory").json()["inventory"]
        assert client.get("/sagas", params={"status": "RUNNING"}).json()["total"] == 0
        assert client.get("/sagas", params={"status": "COMPENSATING"}).json()["total"] == 0
    assert restarted.stop() == 0
    assert _log_statuses(tmp_path / "sagaway.db").keys() <= {"SUCCEEDED", "COMPENSATED"}

    spent: Counter[str] = Counter()
    shipped: Counter[str] = Counter()
    for n, order in enumerate(orders):
        if order["status"] == "completed":
            line = MIX[n % len(MIX)]
            spent[str(line["user_id"])] += PRICES[str(line["product_id"])] * int(line["quantity"])
            shipped[str(line["product_id"])] += int(line["quantity"])
    for account in DEMO_ACCOUNTS:  # per customer: a double charge cannot hide behind a lost refund
        assert round(balances[account.id] * 100) == account.balance_cents - spent[account.id], (
            account.id,
            balances[account.id],
            spent[account.id],
        )
    for product in DEMO_PRODUCTS:
        assert inventory[product.id] == product.stock - shipped[product.id], product.id
    money, units = asyncio.run(_totals(tmp_path / "sagaway.db"))
    assert money == demo_total_money_cents()
    assert units == demo_total_units()
    print(f"at the SIGKILL: {dict(at_kill)}; completed: {sum(spent.values())} cents")


def _get_health(sock: socket.socket) -> int:
    """One ``GET /health`` on an open keep-alive connection; its status code."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: checkout\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        head += chunk
    status_line, _, rest = head.partition(b"\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in rest.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = head.partition(b"\r\n\r\n")[2]
    while len(body) < length:
        body += sock.recv(4096)
    return int(status_line.split()[1])


def test_checkout_serve_bounds_the_connections_it_holds(server_factory: Any) -> None:
    server = server_factory(env={"SAGAWAY_MAX_CONNECTIONS": "2"})
    address = ("127.0.0.1", server.port)
    # Until the server has seen the health check's connection close, a new one may be over the
    # limit (503, connection closed); once one answers 200, it is the only one open.
    first = socket.create_connection(address, timeout=30)
    for _ in range(100):
        if _get_health(first) == 200:
            break
        first.close()
        first = socket.create_connection(address, timeout=30)
    else:
        raise AssertionError("no connection was ever served")
    second = socket.create_connection(address, timeout=30)
    try:
        # A client holding connections open cannot take more than SAGAWAY_MAX_CONNECTIONS.
        assert _get_health(second) == 503
    finally:
        first.close()
        second.close()
