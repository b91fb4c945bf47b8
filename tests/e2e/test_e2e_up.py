"""``checkout up``: the gateway and the three services as real child processes.

One run over HTTP: prefixed output per process, orders placed, SIGINT stops every child (status
0, every port free again), and a second ``checkout up`` on the same files finishes every saga
the first left unfinished, with money and units conserved across the four databases.

Sagas are left unfinished on purpose: the shipping service is frozen (SIGSTOP) until every
order's saga is waiting on its ``ship_order`` step, as read from the gateway's API; then the
first ``checkout up`` is interrupted, and shipping thawed once the gateway has exited (so it
stops gracefully, and may even apply the commands it had received: the retries after the
restart then get its recorded replies).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import httpx
import pytest

import ports
from checkout.domain.demo import DEMO_PRODUCTS, demo_total_money_cents, demo_total_units

pytestmark = pytest.mark.slow

NAMES = ("gateway", "payment", "inventory", "shipping")
READY = re.compile(r"^gateway +\| checkout serving on http://127\.0\.0\.1:(\d+)")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Up:
    """``checkout up`` in ``cwd``; its output lines are collected by a thread."""

    def __init__(self, cwd: Path, base: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWAY_")}
        env.update(PYTHONUNBUFFERED="1", COLUMNS="250", SAGAWAY_WORKER_ID="e2e-up")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "checkout",
                "up",
                "--transport",
                "http",
                "--base-port",
                str(base),
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = f"http://127.0.0.1:{base}"
        self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if READY.match(line):
                return
        self.proc.kill()
        raise AssertionError("checkout up did not start:\n" + "".join(self.output))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


def _child(parent: int, needle: str) -> int:
    """The pid of ``parent``'s child whose command line contains ``needle``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and needle in cmdline:
            return int(proc.name)
    raise LookupError(f"no child of {parent} running {needle!r}")


def _step_status(order: dict[str, Any], step: str) -> str:
    return next(s["status"] for s in order["steps"] if s["name"] == step)


def _orders_terminal(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 90
    while True:
        orders = [client.get(f"/orders/{i}").json() for i in ids]
        if all(o["status"] in ("completed", "failed") for o in orders):
            return orders
        assert time.monotonic() < deadline, [o["status"] for o in orders]
        time.sleep(0.2)  # polling the public API: the sagas run in another process


def test_up_runs_everything_and_a_second_up_resumes_unfinished_sagas(tmp_path: Path) -> None:
    base = ports.free_ports_in_a_row(len(NAMES))
    first = Up(tmp_path, base)
    ids: list[str] = []
    shipping = _child(first.proc.pid, "participant shipping")
    gateway = _child(first.proc.pid, " serve ")
    os.kill(shipping, signal.SIGSTOP)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            assert client.get("/balances").json()["balances"]["user_1"] == 1000.0
            for n in range(6):
                body = {
                    "customer_id": ("user_1", "user_2", "user_3")[n % 3],
                    "items": [{"product_id": "product_1", "quantity": 1}],
                }
                response = client.post("/orders", params={"wait": 0}, json=body)
                assert response.status_code in (201, 202), response.text
                ids.append(response.json()["order_id"])
            deadline = time.monotonic() + 60
            while not all(
                _step_status(client.get(f"/orders/{i}").json(), "ship_order") == "RUNNING"
                for i in ids
            ):
                assert time.monotonic() < deadline, "the sagas never reached ship_order"
                time.sleep(0.2)  # polling the public API: the sagas run in another process
    finally:
        first.proc.send_signal(signal.SIGINT)
        # Thawed once the gateway is gone (it stops first), so no saga can finish meanwhile.
        deadline = time.monotonic() + 60
        while Path(f"/proc/{gateway}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the gateway is up's child, not ours: no wait() on it
        os.kill(shipping, signal.SIGCONT)
        status = first.proc.wait(timeout=60)
    assert status == 0, "".join(first.output)
    assert not any(_listening(port) for port in range(base, base + 4))
    for name in NAMES:
        assert any(line.startswith(f"{name:<9} | ") for line in first.output), name
    for name in ("sagaway", "payment", "inventory", "shipping"):
        assert (tmp_path / f"{name}.db").is_file()
    with sqlite3.connect(tmp_path / "sagaway.db") as conn:
        unfinished = conn.execute(
            "SELECT COUNT(*) FROM sagaway_instances WHERE status NOT IN "
            "('SUCCEEDED', 'COMPENSATED', 'FAILED', 'CANCELLED')"
        ).fetchone()[0]
    assert unfinished == len(ids)

    second = Up(tmp_path, base)
    try:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            orders = _orders_terminal(client, ids)
            assert {o["customer_id"] for o in orders if o["status"] == "failed"} == {"user_3"}
            products = {p["product_id"]: p for p in client.get("/products").json()["products"]}
            sold = sum(1 for o in orders if o["status"] == "completed")
            assert products["product_1"]["shipped"] == sold
            assert products["product_1"]["reserved"] == 0
            for product in DEMO_PRODUCTS:
                row = products[product.id]
                assert row["stock"] + row["reserved"] + row["shipped"] == product.stock
            payment = httpx.get(f"http://127.0.0.1:{base + 1}/totals").json()
            inventory = httpx.get(f"http://127.0.0.1:{base + 2}/totals").json()
            assert payment["money_cents"] == demo_total_money_cents()
            assert inventory["units"] == demo_total_units()
    finally:
        assert second.stop() == 0, "".join(second.output)
