"""Seed 004 (pay later) with the checkout as separate services: the gateway (``checkout
serve``) and the payment, inventory and shipping services (``checkout participant``) as real
processes, each on its own SQLite file, over HTTP and over a real RabbitMQ broker.

The payment part of pay-later runs in the payment service (``flow_payments`` in payment.db,
where the money it captures lives), the delivery part in the shipping service
(``flow_deliveries`` in shipping.db), the order service and the monitor in the gateway
(``flow_orders``); the gateway forwards ``/payments/*`` and ``/couriers`` to them. Both styles:
the choreography (events over the transport's bus: the gateway is the hub over HTTP) and the
orchestration (remote steps over the saga transport, the payment step waiting for the signal).

* every path: delivered, no courier (refunded), cancelled, confirmed twice (one capture), the
  409s, the 404s, the couriers, ``GET /orders``; money read from the payment service's own
  database is conserved (balances + captured payments), and each table is where it belongs;
* the payment timeout in both styles, enforced across the processes (the payment service's
  sweep; the gateway engine's durable timer);
* the gateway killed -9 after the payment service confirmed an orchestrated order's payment
  and before the gateway signalled the saga (over HTTP and over RabbitMQ): the payment's
  ``payment-decided`` event (in the payment service's outbox) reaches the restarted gateway,
  which signals: the order completes;
* a crash: the payment service killed -9 after confirming a payment (capture and its
  ``order-confirmed`` committed) and before the event is published; after its restart the
  relay publishes it: the order completes once, one capture, one delivery, money conserved.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_checkout_services_crash import DEADLINE, SERVICES, Checkout, Proc

import servers
from checkout.domain.demo import demo_total_money_cents

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TORONTO = {
    "street": "12 Queen St W",
    "city": "Toronto",
    "province": "ON",
    "postal_code": "M5H 2N2",
    "country": "CA",
}
ABROAD = {
    "street": "742 Evergreen Terrace",
    "city": "Springfield",
    "province": "OR",
    "postal_code": "97403",
    "country": "US",
}
FLOWS = ("choreography", "orchestration")


class PayLater(Checkout):
    """The four processes, the services told where the gateway (their events' hub) is."""

    def start_all(self, gated: str = "", **gates: str) -> None:
        """Every process; the service ``gated`` with ``gates`` (``tests/gated_services.py``)."""
        for name in SERVICES:
            self.start(name, **(gates if name == gated else {}))
        self.start_gateway()

    def start(self, name: str, **gates: str) -> Proc:
        return self.start_service(name, SAGAWAY_GATEWAY_URL=self.url, **gates)

    def stop(self) -> None:
        super().stop()
        for name, proc in self.procs.items():  # shown by pytest when the test failed
            print(f"---- {name}\n" + "".join(proc.output[-60:]))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def db(self, name: str) -> Path:
        return self.workdir / ("sagaway.db" if name == "gateway" else f"{name}.db")

    def tables(self, name: str) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.db(name))) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {row[0] for row in rows if row[0].startswith("flow_")}

    def money(self) -> int:
        """balances + captured payments, from the payment service's own database."""
        return int(
            self.rows(
                "payment",
                "SELECT (SELECT coalesce(sum(balance_cents), 0) FROM accounts) + (SELECT "
                "coalesce(sum(amount_cents), 0) FROM payments WHERE status = 'captured')",
            )[0][0]
        )


@pytest.fixture
def pay_later_http(tmp_path: Path) -> Iterator[PayLater]:
    checkout = PayLater(tmp_path, "http")
    try:
        yield checkout
    finally:
        checkout.stop()


@contextlib.asynccontextmanager
async def pay_later_rabbitmq(tmp_path: Path) -> AsyncIterator[PayLater]:
    async with servers.fresh_rabbit_vhost("pay-later-svc") as url:
        checkout = PayLater(tmp_path, "rabbitmq", url)
        try:
            yield checkout
        finally:
            checkout.stop()


# --------------------------------------------------------------------------- the paths


def create(client: httpx.Client, address: dict[str, str], flow: str) -> Any:
    body = {
        "flow": flow,
        "customer_id": "user_1",
        "items": [{"product_id": "product_1", "quantity": 2}],
        "shipping_address": address,
    }
    response = client.post("/orders/create_order", json=body)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending_payment"
    assert order["amount_cents"] == 10_000
    payment = client.get(f"/payments/{order['payment_id']}")
    assert payment.status_code == 200, payment.text
    assert payment.json()["status"] == "pending"
    return order


def decide(client: httpx.Client, what: str, payment_id: str) -> Any:
    response = client.post(f"/payments/{what}", json={"payment_id": payment_id})
    assert response.status_code == 200, response.text
    return response.json()


def balances(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/balances")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["balances"]
    return data


def ended(client: httpx.Client, order_id: str) -> Any:
    """The order once its process ended (its saga terminal), read from the gateway's API."""
    deadline = time.monotonic() + DEADLINE
    while True:
        order = client.get(f"/orders/{order_id}").json()
        if order["saga_status"] in ("SUCCEEDED", "COMPENSATED", "FAILED"):
            return order
        assert time.monotonic() < deadline, order
        time.sleep(0.1)  # polling the public API: the process runs in other processes


def happy(client: httpx.Client, flow: str) -> None:
    before = balances(client)
    order = create(client, TORONTO, flow)
    assert balances(client) == before, "a pending payment holds no money"
    answer = decide(client, "confirm", order["payment_id"])
    assert answer["payment"]["status"] == "captured"
    done = ended(client, order["order_id"])
    assert (done["status"], done["courier"]) == ("completed", "Toronto Bike Couriers")
    assert done["saga_status"] == "SUCCEEDED"
    services = {e["service"] for e in done["timeline"]}
    assert services == {"order", "payment", "delivery"}, done["timeline"]
    after = balances(client)
    assert round((before["user_1"] - after["user_1"]) * 100) == 10_000
    again = decide(client, "confirm", order["payment_id"])  # the same answer, one capture
    assert again["payment"] == answer["payment"]
    assert balances(client) == after
    refused = client.post("/payments/cancel", json={"payment_id": order["payment_id"]})
    assert refused.status_code == 409, refused.text
    assert "captured" in refused.json()["detail"]


def no_courier(client: httpx.Client, flow: str) -> None:
    before = balances(client)
    order = create(client, ABROAD, flow)
    decide(client, "confirm", order["payment_id"])
    done = ended(client, order["order_id"])
    assert done["status"] == "cancelled"
    assert done["reason"] == "no courier serves Springfield, OR, US"
    assert done["courier"] is None
    assert done["saga_status"] == "COMPENSATED"
    payment = client.get(f"/payments/{order['payment_id']}").json()
    assert (payment["status"], payment["refunded"]) == ("cancelled", True)
    assert balances(client) == before, "captured, then refunded"


def cancelled(client: httpx.Client, flow: str) -> None:
    before = balances(client)
    order = create(client, TORONTO, flow)
    answer = decide(client, "cancel", order["payment_id"])
    assert (answer["payment"]["status"], answer["payment"]["refunded"]) == ("cancelled", False)
    done = ended(client, order["order_id"])
    assert (done["status"], done["reason"]) == ("cancelled", "cancelled by the customer")
    again = decide(client, "cancel", order["payment_id"])
    assert again["payment"] == answer["payment"]
    refused = client.post("/payments/confirm", json={"payment_id": order["payment_id"]})
    assert refused.status_code == 409, refused.text
    assert "cancelled" in refused.json()["detail"]
    assert balances(client) == before


def every_path(checkout: PayLater) -> None:
    checkout.start_all()
    with checkout.client() as client:
        for flow in FLOWS:
            happy(client, flow)
            no_courier(client, flow)
            cancelled(client, flow)
        for path in ("/payments/confirm", "/payments/cancel"):
            response = client.post(path, json={"payment_id": "nope"})
            assert response.status_code == 404, response.text
            assert "nope" in response.json()["detail"]
        assert client.get("/payments/nope").status_code == 404
        couriers = client.get("/couriers")
        assert couriers.status_code == 200, couriers.text
        assert couriers.json()["couriers"][-1]["name"] == "Canada Post"
        listed = client.get("/orders", params={"status": "completed"}).json()["orders"]
        assert [(o["kind"], o["courier"]) for o in listed] == [
            ("pay_later", "Toronto Bike Couriers")
        ] * 2
    # Each service owns its tables, in its own database (its own Alembic history made them).
    assert checkout.tables("gateway") == {"flow_orders", "flow_order_inbox", "flow_order_outbox"}
    assert checkout.tables("payment") == {
        "flow_payments",
        "flow_payment_inbox",
        "flow_payment_outbox",
    }
    assert checkout.tables("shipping") == {
        "flow_deliveries",
        "flow_delivery_inbox",
        "flow_delivery_outbox",
    }
    assert checkout.tables("inventory") == set()
    captured = checkout.rows("payment", "SELECT count(*) FROM payments WHERE status='captured'")
    assert captured == [(2,)], "the two delivered orders; the no-courier ones were refunded"
    assert checkout.money() == demo_total_money_cents()


def test_every_path_over_http(pay_later_http: PayLater) -> None:
    every_path(pay_later_http)


async def test_every_path_over_rabbitmq(tmp_path: Path) -> None:
    async with pay_later_rabbitmq(tmp_path) as checkout:
        every_path(checkout)


def test_payments_time_out_over_http(pay_later_http: PayLater) -> None:
    """Nobody confirms: in both styles the order is cancelled by the payment timeout (2 s
    here), enforced across the processes: the choreographed payment by the payment service's
    sweep (its payment-cancelled event cancels the order in the gateway), the orchestrated
    one by the gateway engine's durable timer on the saga's wait (it compensates, cancelling
    the payment in the payment service). A late confirm is a 409; no money moved."""
    checkout = pay_later_http
    timeout = {"SAGAWAY_PAYMENT_TIMEOUT_SECONDS": "2"}
    for name in SERVICES:
        checkout.start(name, **timeout)
    checkout.start_gateway(**timeout)
    with checkout.client() as client:
        before = balances(client)
        for flow in FLOWS:
            order = create(client, TORONTO, flow)
            done = ended(client, order["order_id"])
            assert (done["status"], done["reason"]) == (
                "cancelled",
                "payment not confirmed within 2 s",
            ), (flow, done)
            payment = client.get(f"/payments/{order['payment_id']}").json()
            assert (payment["status"], payment["refunded"]) == ("cancelled", False), payment
            late = client.post("/payments/confirm", json={"payment_id": order["payment_id"]})
            assert late.status_code == 409, late.text
        assert balances(client) == before
    assert checkout.rows("payment", "SELECT count(*) FROM payments WHERE status='captured'") == [
        (0,)
    ]
    assert checkout.money() == demo_total_money_cents()


# --------------------------------------------------------------------------- the crash


def killed_before_publish(checkout: PayLater, service: str, event: str) -> None:
    """``service`` killed -9 once its transaction emitting ``event`` committed and before the
    event left its outbox; restarted, its relay publishes it: the process goes on, each
    effect once."""
    checkout.start_all(service, CRASH_HOLD_EVENT=event)
    with checkout.client() as client:
        before = balances(client)
        order = create(client, TORONTO, "choreography")
        confirmed = client.post(
            "/payments/confirm", params={"wait": 0}, json={"payment_id": order["payment_id"]}
        )
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["payment"]["status"] == "captured"
        checkout.procs[service].wait_for(f"GATE event {event} ")
        checkout.procs[service].kill9()
        outbox = "flow_payment_outbox" if service == "payment" else "flow_delivery_outbox"
        held = checkout.rows(service, f"SELECT type FROM {outbox}")
        assert (event,) in held, "committed with its state change, not yet published"
        assert client.get(f"/orders/{order['order_id']}").json()["status"] != "completed"
        checkout.start(service)
        done = ended(client, order["order_id"])
        assert (done["status"], done["courier"]) == ("completed", "Toronto Bike Couriers")
        emitted = [e["event"] for e in done["timeline"]]
        assert emitted.count(event) == 1, emitted
        again = decide(client, "confirm", order["payment_id"])
        assert again["payment"]["status"] == "captured"
        after = balances(client)
    assert round((before["user_1"] - after["user_1"]) * 100) == 10_000, "captured once"
    oid = order["order_id"]
    assert checkout.rows("payment", "SELECT status FROM payments WHERE order_id=?", oid) == [
        ("captured",)
    ]
    deliveries = checkout.rows("shipping", "SELECT courier FROM flow_deliveries")
    assert deliveries == [("Toronto Bike Couriers",)]
    assert checkout.money() == demo_total_money_cents()
    for name, outbox in (("payment", "flow_payment_outbox"), ("shipping", "flow_delivery_outbox")):
        assert checkout.rows(name, f"SELECT count(*) FROM {outbox}") == [(0,)]


def test_http_payment_killed_between_commit_and_publish(pay_later_http: PayLater) -> None:
    killed_before_publish(pay_later_http, "payment", "order-confirmed")


def test_http_shipping_killed_between_commit_and_publish(pay_later_http: PayLater) -> None:
    killed_before_publish(pay_later_http, "shipping", "delivery-assigned")


async def test_rabbitmq_payment_killed_between_commit_and_publish(tmp_path: Path) -> None:
    async with pay_later_rabbitmq(tmp_path) as checkout:
        killed_before_publish(checkout, "payment", "order-confirmed")


def gateway_killed_between_the_capture_and_the_signal(checkout: PayLater) -> None:
    """The gateway killed -9 holding an orchestrated order's confirm signal, the capture
    committed in the payment service: restarted, it signals the saga from the payment's
    payment-decided event (same signal id), and the order completes, captured once."""
    checkout.start_all()
    checkout.procs["gateway"].stop()
    checkout.start_gateway(CRASH_HOLD_SIGNAL="1")
    with checkout.client() as client:
        before = balances(client)
        order = create(client, TORONTO, "orchestration")
        body = {"payment_id": order["payment_id"]}

        def confirm_until_it_dies() -> None:  # held in the gateway, which dies answering
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{checkout.url}/payments/confirm", json=body, timeout=DEADLINE)

        confirming = threading.Thread(target=confirm_until_it_dies, daemon=True)
        confirming.start()
        checkout.procs["gateway"].wait_for("GATE signal confirm:")
        payment = checkout.rows(
            "payment", "SELECT status FROM flow_payments WHERE id=?", order["payment_id"]
        )
        assert payment == [("captured",)], "committed in the payment service"
        checkout.procs["gateway"].kill9()
        checkout.start_gateway()
        done = ended(client, order["order_id"])
        assert (done["status"], done["courier"]) == ("completed", "Toronto Bike Couriers")
        saga = client.get(f"/sagas/{done['saga_id']}").json()
        assert saga["status"] == "SUCCEEDED"
        received = [e for e in saga["history"] if e["type"] == "signal_received"]
        assert len(received) == 1, received
        after = balances(client)
    assert round((before["user_1"] - after["user_1"]) * 100) == 10_000, "captured once"
    assert checkout.money() == demo_total_money_cents()
    assert checkout.rows("payment", "SELECT count(*) FROM flow_payment_outbox") == [(0,)]


def test_http_gateway_killed_between_the_capture_and_the_signal(pay_later_http: PayLater) -> None:
    gateway_killed_between_the_capture_and_the_signal(pay_later_http)


async def test_rabbitmq_gateway_killed_between_the_capture_and_the_signal(tmp_path: Path) -> None:
    async with pay_later_rabbitmq(tmp_path) as checkout:
        gateway_killed_between_the_capture_and_the_signal(checkout)
