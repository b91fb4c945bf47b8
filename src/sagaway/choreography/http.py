"""Domain events over HTTP, for services that talk HTTP and have no broker.

Each process runs an ``HttpBus`` named after it (``"gateway"``, ``"payment"``...) with the URLs
of the processes it is linked to (``peers``), and serves :func:`event_router` (``POST
/choreography/events``). A hub layout needs the fewest links: the services know the hub, the
hub knows every service, and the hub passes on what one service sent to the others.

* ``publish(events)`` (the relay): delivers to this process's subscribers, then POSTs the
  events to every peer; it returns once every peer answered 2xx and raises otherwise, so the
  relay keeps the events and publishes them again (to everyone: receivers dedupe through their
  inbox, the monitor on the event id).
* a peer's POST: delivered to this process's subscribers, then passed on to every other peer;
  answered 200 only once all of that succeeded (a 503 otherwise: the sender publishes again).

At least once, like ``RabbitBus``; no ordering between services' events either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from fastapi import APIRouter, HTTPException, Request

from sagaway.choreography.bus import EventBus
from sagaway.choreography.events import DomainEvent

log = logging.getLogger("sagaway.choreography")

EVENTS_PATH = "/choreography/events"
SENDER_HEADER = "X-Sagaway-Bus"


class HttpBus(EventBus):
    """The HTTP event bus of the process ``name`` (see the module docstring)."""

    def __init__(
        self, name: str, peers: Mapping[str, str], *, timeout: float = 10.0, path: str = EVENTS_PATH
    ) -> None:
        super().__init__()
        self.name = name
        self.peers = {peer: url.rstrip("/") + path for peer, url in peers.items()}
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=2.0)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        await self._deliver_here(events)
        await self._send(events, exclude=None)

    async def receive(self, events: Sequence[DomainEvent], sender: str | None) -> None:
        """Events a peer (``sender``) POSTed: delivered here, then passed on to the others."""
        await self._deliver_here(events)
        await self._send(events, exclude=sender)

    async def _deliver_here(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            for sub in self.subscriptions:
                if sub.wants(event.type):
                    await sub.handler(event)

    async def _send(self, events: Sequence[DomainEvent], exclude: str | None) -> None:
        targets = [(peer, url) for peer, url in self.peers.items() if peer != exclude]
        if not targets or not events:
            return
        body = [event.to_json() for event in events]
        await asyncio.gather(*(self._post(peer, url, body) for peer, url in targets))

    async def _post(self, peer: str, url: str, body: list[dict[str, Any]]) -> None:
        if self._session is None:
            await self.open()
        assert self._session is not None
        try:
            async with self._session.post(
                url, json=body, headers={SENDER_HEADER: self.name}
            ) as response:
                if response.status >= 300:
                    text = await response.text()
                    raise ConnectionError(f"{peer}: HTTP {response.status} {text[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionError(f"{peer} ({url}) did not take the events: {exc!r}") from exc


async def receive_events(bus: HttpBus, request: Request) -> dict[str, int]:
    """Take a peer's POST of a JSON list of events (:meth:`HttpBus.receive`): 422 for a body
    that is not one, 503 when a handler or a peer failed (the sender publishes again)."""
    try:
        data = await request.json()
        events = [DomainEvent.from_json(item) for item in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise HTTPException(422, f"not a list of events: {exc}") from None
    sender = request.headers.get(SENDER_HEADER)
    try:
        await bus.receive(events, sender)
    except Exception as exc:
        log.warning("events from %s not taken: %r", sender, exc)
        raise HTTPException(503, f"events not taken, publish again: {exc}") from None
    return {"received": len(events)}


def event_router(bus: HttpBus, path: str = EVENTS_PATH) -> APIRouter:
    """``POST {path}``: a JSON list of events from a peer, handled by :func:`receive_events`."""
    router = APIRouter(tags=["choreography"], include_in_schema=False)

    @router.post(path)
    async def receive(request: Request) -> dict[str, int]:
        return await receive_events(bus, request)

    return router


__all__ = ["EVENTS_PATH", "HttpBus", "event_router", "receive_events"]
