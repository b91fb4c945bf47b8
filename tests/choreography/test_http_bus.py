"""``HttpBus`` over real HTTP (uvicorn on loopback): a hub and two leaves, as the checkout's
gateway and its payment and shipping services.

* a leaf's event reaches its own subscribers, the hub's, and the other leaf's (passed on by
  the hub), each once;
* a leaf that is down makes the publisher's ``publish`` raise (the relay keeps the event);
  once it is up, publishing again delivers it there: at least once, the others see it again
  (their inbox dedupes; here the subscribers simply count);
* a body that is not a list of events is a 422.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from sagaway.choreography import DomainEvent
from sagaway.choreography.http import EVENTS_PATH, HttpBus, event_router


class Server:
    """uvicorn on a socket bound up front (its URL is known before the app is built)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self, app: FastAPI) -> None:
        self.sock.listen(128)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
        self.sock.close()


def app_of(bus: HttpBus) -> FastAPI:
    app = FastAPI()
    app.include_router(event_router(bus))
    return app


def counting(bus: HttpBus, name: str, seen: Counter[tuple[str, str]]) -> None:
    async def handler(event: DomainEvent) -> None:
        seen[(name, event.id)] += 1

    bus.subscribe(name, None, handler)


def event(type_: str = "order-confirmed") -> DomainEvent:
    return DomainEvent.new(type_, {"n": 1}, correlation_id="o-1", source="payment", at=1.0)


async def test_a_leaf_event_reaches_everyone_once_and_a_down_peer_fails_the_publish() -> None:
    servers = {name: Server() for name in ("gateway", "payment", "shipping")}
    hub = HttpBus("gateway", {n: servers[n].url for n in ("payment", "shipping")}, timeout=5)
    payment = HttpBus("payment", {"gateway": servers["gateway"].url}, timeout=5)
    shipping = HttpBus("shipping", {"gateway": servers["gateway"].url}, timeout=5)
    seen: Counter[tuple[str, str]] = Counter()
    for name, bus in (("gateway", hub), ("payment", payment), ("shipping", shipping)):
        counting(bus, name, seen)
    servers["gateway"].start(app_of(hub))
    servers["payment"].start(app_of(payment))
    try:
        for bus in (hub, payment, shipping):
            await bus.open()
        first = event()
        with pytest.raises(ConnectionError, match="shipping"):
            await payment.publish([first])  # shipping is down: the hub cannot pass it on
        assert seen[("gateway", first.id)] == 1
        assert seen[("shipping", first.id)] == 0
        servers["shipping"].start(app_of(shipping))
        await payment.publish([first])  # the relay's next pass
        assert seen == Counter(
            {("payment", first.id): 2, ("gateway", first.id): 2, ("shipping", first.id): 1}
        )
        second = event("delivery-assigned")
        await shipping.publish([second])
        assert [seen[(n, second.id)] for n in ("payment", "gateway", "shipping")] == [1, 1, 1]
        async with httpx.AsyncClient() as client:
            bad = await client.post(servers["gateway"].url + EVENTS_PATH, json=[{"id": "x"}])
        assert bad.status_code == 422
    finally:
        for bus in (hub, payment, shipping):
            await bus.close()
        for server in servers.values():
            await server.stop()
