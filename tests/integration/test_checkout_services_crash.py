"""Crash tests of the checkout as separate services: the gateway (``checkout serve``) and the
payment, inventory and shipping services (``checkout participant``) as real processes, each
service on its own SQLite file, over HTTP and over a real RabbitMQ broker.

Processes are killed in a precise state with the gates of ``tests/gated_services.py`` (a call
held after its effect, or a relay publish held before the broker sees it, announced on stdout),
never after a sleep. Each test ends with every saga terminal, every effect applied at most once
per order (exactly once for a completed order), read from the services' OWN tables, and money
and units conserved across the service databases (the services' invariants: balances +
captured payments; stock + reserved per product).

* a participant killed -9 after its commit and before its reply (HTTP: the gateway retries with
  the same key; RabbitMQ: the broker redelivers the unacked command): the restarted service's
  inbox answers with the recorded reply;
* the gateway killed after a transition and its outbox message committed and before the relay
  published (RabbitMQ): the restarted gateway's relay re-publishes;
* every command delivered a second time (HTTP and RabbitMQ), with a different payload: the
  recorded reply, nothing applied again;
* a participant unresponsive for longer than the step's retries (HTTP; its create commands
  held before processing): the saga compensates, and the forward command arriving late (after
  the service's restart) is refused by the tombstone its compensation left.

* RabbitMQ stopped and started (``rabbitmqctl stop_app`` / ``start_app``) while replies are
  held after their commit and orders keep coming: the only test here that stops the shared
  broker, kept short.

(The relay and the parked sagas under kills of the library's own processes:
``test_remote_crash.py``; the broker restarted under the library's engine and participants:
``test_rabbitmq_saga.py``.)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ports
import servers
from checkout.domain.demo import demo_total_money_cents, demo_total_units
from sagaway.state import Phase
from sagaway.transport import Command

# Four processes started (and one restarted) per test: a minute or more on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LAUNCHER = Path(__file__).parents[1] / "gated_services.py"
SERVICES = ("payment", "inventory", "shipping")
DEADLINE = 120.0  # generous: the machine is shared; correct runs take a few seconds
TERMINAL = ("completed", "failed")


class Proc:
    """A launched process whose output lines are collected by a thread."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.terminated = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, prefix: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=1.0)
                if line.startswith(prefix):
                    return line
            assert self.proc.poll() is None, f"{self.name} died:\n" + "".join(self.output)
        raise AssertionError(f"{self.name}: no {prefix!r}:\n" + "".join(self.output))

    def terminate(self) -> None:
        """Ask it to stop (one SIGTERM: a second one would skip its graceful shutdown), not
        waiting: ``stop`` waits."""
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.terminate()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Checkout:
    """The four processes of one test, in ``workdir``."""

    def __init__(self, workdir: Path, transport: str, rabbitmq_url: str = "") -> None:
        self.workdir = workdir
        self.transport = transport
        self.rabbitmq_url = rabbitmq_url
        self.ports = {name: ports.free_port() for name in ("gateway", *SERVICES)}
        self.procs: dict[str, Proc] = {}
        self.url = f"http://127.0.0.1:{self.ports['gateway']}"

    def _env(self, **gates: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAWAY_", "CRASH_"))}
        env.update(PYTHONUNBUFFERED="1", SAGAWAY_RABBITMQ_URL=self.rabbitmq_url, **gates)
        return env

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start_service(self, name: str, **gates: str) -> Proc:
        db = f"sqlite:///{self.workdir / f'{name}.db'}"
        args = ["participant", name, "--transport", self.transport]
        args += ["--port", str(self.ports[name]), "--database-url", db]
        proc = self.procs[name] = Proc(name, args, self._env(**gates), self.workdir)
        self._healthy(self.service_url(name), proc)
        return proc

    def start_gateway(self, **gates: str) -> Proc:
        env = self._env(**gates)
        db = f"sqlite:///{self.workdir / 'sagaway.db'}"
        env.update(SAGAWAY_TRANSPORT=self.transport, SAGAWAY_DATABASE_URL=db, SAGAWAY_STORE_URL=db)
        for name in SERVICES:
            env[f"SAGAWAY_{name.upper()}_URL"] = self.service_url(name)
        args = ["serve", "--port", str(self.ports["gateway"])]
        proc = self.procs["gateway"] = Proc("gateway", args, env, self.workdir)
        self._healthy(self.url, proc)
        return proc

    @staticmethod
    def _healthy(url: str, proc: Proc) -> None:
        deadline = time.monotonic() + DEADLINE
        # One client for the whole wait: a new one per poll (httpx.get) costs ~50 ms of CPU.
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                assert proc.proc.poll() is None, f"{proc.name} died:\n" + "".join(proc.output)
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/health").status_code == 200:
                        return
                time.sleep(0.1)  # a child's start-up: its health route is the observable state
        raise AssertionError(f"{proc.name} never became healthy:\n" + "".join(proc.output))

    def stop(self) -> None:
        if "gateway" in self.procs:  # first: no command sent to a service already gone
            self.procs["gateway"].stop()
        for proc in self.procs.values():  # then the services, all told at once
            proc.terminate()
        for proc in self.procs.values():
            proc.stop()

    # ---------------------------------------------------------------- orders

    def place(self, customers: list[str]) -> list[str]:
        ids = []
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for customer in customers:
                qty = 10 if customer == "user_3" else 1  # user_3 cannot pay for 10
                body = {
                    "customer_id": customer,
                    "items": [{"product_id": "product_1", "quantity": qty}],
                }
                response = client.post("/orders", params={"wait": 0}, json=body)
                assert response.status_code in (201, 202), response.text
                ids.append(response.json()["order_id"])
        return ids

    def orders(self, ids: list[str], client: httpx.Client | None = None) -> list[dict[str, Any]]:
        if client is None:
            with httpx.Client(base_url=self.url, timeout=30) as own:
                return self.orders(ids, own)
        return [client.get(f"/orders/{i}").json() for i in ids]

    def wait_orders(self, ids: list[str], until: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + DEADLINE
        with httpx.Client(base_url=self.url, timeout=30) as client:  # one for every poll
            while True:
                orders = self.orders(ids, client)
                if all(until(o) for o in orders):
                    return orders
                assert time.monotonic() < deadline, [(o["status"], o.get("steps")) for o in orders]
                time.sleep(0.2)  # polling the public API: the sagas run in another process

    def wait_terminal(self, ids: list[str]) -> list[dict[str, Any]]:
        return self.wait_orders(ids, lambda o: o["status"] in TERMINAL)

    # ---------------------------------------------------------------- the services' tables

    def rows(self, service: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.workdir / f"{service}.db")) as conn:
            return conn.execute(sql, args).fetchall()

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        tables = {
            "payment": ("accounts", "payments", "payment_inbox"),
            "inventory": ("products", "inventory_reservations", "inventory_inbox"),
            "shipping": ("shipments", "shipping_inbox"),
        }
        return {
            f"{service}.{table}": sorted(self.rows(service, f"SELECT * FROM {table}"), key=repr)
            for service, names in tables.items()
            for table in names
        }

    def check(self, orders: list[dict[str, Any]]) -> None:
        """Every saga terminal; per order at most one payment, reservation and shipment row
        (exactly one live one for a completed order, none for a failed one); money and units
        conserved, all read from the services' own databases."""
        with contextlib.closing(sqlite3.connect(self.workdir / "sagaway.db")) as conn:
            open_sagas = conn.execute(
                "SELECT count(*) FROM sagaway_instances WHERE status NOT IN "
                "('SUCCEEDED', 'COMPENSATED', 'FAILED', 'CANCELLED')"
            ).fetchone()[0]
        assert open_sagas == 0
        for order in orders:
            oid, done = order["order_id"], order["status"] == "completed"
            assert order["status"] in TERMINAL, order
            payments = self.rows("payment", "SELECT status FROM payments WHERE order_id=?", oid)
            reservations = self.rows(
                "inventory", "SELECT status FROM inventory_reservations WHERE order_id=?", oid
            )
            shipments = self.rows("shipping", "SELECT status FROM shipments WHERE order_id=?", oid)
            for rows in (payments, reservations, shipments):
                assert len(rows) <= 1, (oid, payments, reservations, shipments)
            captured = [r for r in payments if r[0] == "captured"]
            created = [r for r in shipments if r[0] == "created"]
            assert len(captured) == (1 if done else 0), (oid, order["status"], payments)
            assert len(created) == (1 if done else 0), (oid, order["status"], shipments)
        money = self.rows(
            "payment",
            "SELECT (SELECT coalesce(sum(balance_cents), 0) FROM accounts) + (SELECT "
            "coalesce(sum(amount_cents), 0) FROM payments WHERE status = 'captured')",
        )[0][0]
        assert money == demo_total_money_cents()
        units = dict(self.rows("inventory", "SELECT id, stock + reserved FROM products"))
        assert units == demo_total_units()


@pytest.fixture
def checkout_http(tmp_path: Path) -> Iterator[Checkout]:
    checkout = Checkout(tmp_path, "http")
    try:
        yield checkout
    finally:
        checkout.stop()


@contextlib.asynccontextmanager
async def rabbit_checkout(tmp_path: Path) -> AsyncIterator[Checkout]:
    async with servers.fresh_rabbit_vhost("svc-crash") as url:
        checkout = Checkout(tmp_path, "rabbitmq", url)
        try:
            yield checkout
        finally:
            checkout.stop()


def _command(message_id: str, participant: str, command: str, payload: Any) -> Command:
    saga_id, step, phase = message_id.rsplit(":", 2)
    return Command(
        message_id=message_id,
        saga_id=saga_id,
        saga_name="checkout",
        step=step,
        phase=Phase(phase),
        attempt=9,
        participant=participant,
        command=command,
        payload=payload,
        forward_key=None if phase == Phase.FORWARD else f"{saga_id}:{step}:forward",
    )


def _post(checkout: Checkout, command: Command) -> httpx.Response:
    return httpx.post(
        f"{checkout.service_url(command.participant)}/saga/commands/{command.command}",
        json=command.to_json(),
        headers={"Idempotency-Key": command.message_id},
        timeout=30,
    )


# --------------------------------------------------------------------------- the scenarios


def _kill_payment_after_commit(checkout: Checkout) -> None:
    for name in ("inventory", "shipping"):
        checkout.start_service(name)
    payment = checkout.start_service("payment", CRASH_HOLD_COMMAND="payment.start")
    # Attempts enough to outlast the payment service's restart on a loaded machine.
    checkout.start_gateway(CRASH_STEP_ATTEMPTS="60", CRASH_STEP_MAX_DELAY="2")
    ids = checkout.place(["user_1", "user_2", "user_3", "user_1"])
    payment.wait_for("GATE command ")  # a charge (or a refusal) committed, its reply held
    payment.kill9()
    checkout.start_service("payment")
    orders = checkout.wait_terminal(ids)
    assert [o["status"] for o in orders] == ["completed", "completed", "failed", "completed"], [
        (o["status"], o["error"], [(s["name"], s["status"], s["error"]) for s in o["steps"]])
        for o in orders
    ]
    checkout.check(orders)


def test_http_participant_killed_after_commit_before_reply(checkout_http: Checkout) -> None:
    _kill_payment_after_commit(checkout_http)


async def test_rabbitmq_participant_killed_after_commit_before_reply(tmp_path: Path) -> None:
    async with rabbit_checkout(tmp_path) as checkout:
        _kill_payment_after_commit(checkout)


async def test_rabbitmq_gateway_killed_after_commit_before_publish(tmp_path: Path) -> None:
    async with rabbit_checkout(tmp_path) as checkout:
        for name in SERVICES:
            checkout.start_service(name)
        gateway = checkout.start_gateway(CRASH_HOLD_PUBLISH="1")
        ids = checkout.place(["user_1", "user_2", "user_3"])
        gateway.wait_for("GATE publish ")
        # Every saga's reserve step RUNNING: its command is in the outbox, committed with the
        # transition, and no publish got through (each one is held).
        checkout.wait_orders(
            ids,
            lambda o: any(
                s["name"] == "reserve_inventory" and s["status"] == "RUNNING" for s in o["steps"]
            ),
        )
        assert checkout.rows("inventory", "SELECT count(*) FROM inventory_inbox") == [(0,)]
        gateway.kill9()
        checkout.start_gateway()  # its relay's sweep publishes what the dead one left
        orders = checkout.wait_terminal(ids)
        assert [o["status"] for o in orders] == ["completed", "completed", "failed"]
        checkout.check(orders)


def _recorded_commands(checkout: Checkout) -> list[tuple[Command, bool, Any]]:
    """Every command the services' inboxes recorded, rebuilt with another payload than the
    first delivery's (a redelivery is answered by its key, not by its body), with whether it
    succeeded and its recorded output."""
    found = []
    for service in SERVICES:
        recorded = checkout.rows(
            service, f"SELECT message_id, command, ok, reply FROM {service}_inbox"
        )
        for message_id, name, ok, reply in recorded:
            payload = {"order_id": "other", "account_id": "user_1", "amount_cents": 1, "items": []}
            command = _command(message_id, service, name, payload)
            found.append((command, bool(ok), json.loads(reply).get("output")))
    assert len(found) >= 3 * 3  # at least every forward command of the three orders
    return found


def _run_three_orders(checkout: Checkout) -> list[dict[str, Any]]:
    for name in SERVICES:
        checkout.start_service(name)
    checkout.start_gateway()
    return checkout.wait_terminal(checkout.place(["user_1", "user_3", "user_2"]))


def test_http_duplicate_delivery_gets_the_recorded_reply(checkout_http: Checkout) -> None:
    orders = _run_three_orders(checkout_http)
    before = checkout_http.snapshot()
    for command, ok, output in _recorded_commands(checkout_http):
        response = _post(checkout_http, command)
        assert response.status_code == (200 if ok else 409), response.text
        if ok:
            assert response.json()["output"] == output
    assert checkout_http.snapshot() == before
    checkout_http.check(orders)


async def test_rabbitmq_duplicate_delivery_gets_the_recorded_reply(tmp_path: Path) -> None:
    import aio_pika

    async with rabbit_checkout(tmp_path) as checkout:
        orders = _run_three_orders(checkout)
        before = checkout.snapshot()
        commands = _recorded_commands(checkout)
        connection = await aio_pika.connect_robust(checkout.rabbitmq_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("saga_events")
            replies = await channel.declare_queue(exclusive=True)
            await replies.bind(exchange, "test.duplicates")
            for command, _, _ in commands:
                await exchange.publish(
                    aio_pika.Message(
                        json.dumps(command.to_json()).encode(),
                        message_id=command.message_id,
                        reply_to="test.duplicates",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=f"{command.participant}.{command.command}",
                )
            got: dict[str, dict[str, Any]] = {}
            async with replies.iterator(timeout=DEADLINE) as messages:
                async for message in messages:
                    async with message.process():
                        reply = json.loads(message.body)
                        got[reply["message_id"]] = reply
                    if len(got) == len(commands):
                        break
        for command, ok, output in commands:
            reply = got[command.message_id]
            assert reply["ok"] is ok, reply
            if ok:
                assert reply["output"] == output
        assert checkout.snapshot() == before
        checkout.check(orders)


def test_http_participant_down_past_retries_compensates_and_tombstone_refuses_late_command(
    checkout_http: Checkout,
) -> None:
    for name in ("payment", "inventory"):
        checkout_http.start_service(name)
    # Shipping accepts the create commands and never answers them (held before processing:
    # nothing committed); a service refusing connections would be skipped by the engine as
    # certainly not reached, this one leaves each attempt uncertain.
    shipping = checkout_http.start_service("shipping", CRASH_HOLD_BEFORE="shipping.create")
    checkout_http.start_gateway(CRASH_STEP_ATTEMPTS="2")
    ids = checkout_http.place(["user_1", "user_2"])
    # ship_order's attempts spent, uncertain: the saga compensates it (shipping's cancel finds
    # no shipment and leaves a tombstone), then refunds and releases.
    orders = checkout_http.wait_terminal(ids)
    shipping.kill9()  # the held creates die with it: they would arrive late, after the cancel
    checkout_http.start_service("shipping")
    assert [o["status"] for o in orders] == ["failed", "failed"]
    inbox = checkout_http.rows("shipping", "SELECT message_id, kind FROM shipping_inbox")
    assert sum(kind == "tombstone" for _, kind in inbox) == 2, (inbox, [o["steps"] for o in orders])
    for order in orders:
        key = f"{order['saga_id']}:ship_order:forward"
        assert checkout_http.rows(
            "shipping", "SELECT kind FROM shipping_inbox WHERE message_id=?", key
        ) == [("tombstone",)]
        late = _command(key, "shipping", "create", {"order_id": order["order_id"], "items": []})
        response = _post(checkout_http, late)
        assert response.status_code == 409, response.text
    assert checkout_http.rows("shipping", "SELECT count(*) FROM shipments") == [(0,)]
    checkout_http.check(orders)


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("broker_to_ourselves")  # it stops the broker
async def test_rabbitmq_stopped_and_started_mid_run(tmp_path: Path) -> None:
    async with rabbit_checkout(tmp_path) as checkout:
        for name in ("inventory", "shipping"):
            checkout.start_service(name)
        payment = checkout.start_service(
            "payment", CRASH_HOLD_COMMAND="payment.start", CRASH_RELEASE_ON_USR1="1"
        )
        checkout.start_gateway(CRASH_STEP_ATTEMPTS="60", CRASH_STEP_MAX_DELAY="2")
        ids = checkout.place(["user_1", "user_2", "user_3"])
        payment.wait_for("GATE command ")  # a charge committed, its reply (and ack) held
        stopped = True
        await servers.rabbitmqctl("stop_app")
        try:
            payment.proc.send_signal(
                signal.SIGUSR1
            )  # the held replies meet a dead connection: unacked, redelivered
            ids += checkout.place(["user_2", "user_1"])  # their commands wait in the outbox
        finally:
            await servers.rabbitmqctl("start_app")
            stopped = False
        assert not stopped
        orders = checkout.wait_terminal(ids)
        assert [o["status"] for o in orders] == [
            "completed",
            "completed",
            "failed",
            "completed",
            "completed",
        ]
        checkout.check(orders)
