"""Helpers for the RabbitMQ transport tests: commands, a deduping in-test participant, a reply
collector, reading a queue directly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika

from sagaway.state import Phase
from sagaway.transport.base import Command, Reply

DEADLINE = 30.0  # generous: the machine is shared; a correct run finishes in well under a second


def command(
    n: int, participant: str = "inventory", name: str = "reserve", attempt: int = 1
) -> Command:
    return Command(
        message_id=f"saga-{n}:reserve:forward",
        saga_id=f"saga-{n}",
        saga_name="checkout",
        step="reserve",
        phase=Phase.FORWARD,
        attempt=attempt,
        participant=participant,
        command=name,
        payload={"sku": "widget", "qty": 1, "n": n},
        headers={"traceparent": f"00-{n:032x}-{n:016x}-01"},
    )


class InboxParticipant:
    """A participant whose inbox is a dict: the effect (``stock`` moves) happens once per
    message_id, a redelivery gets the recorded reply. ``fail`` raises before the effect."""

    def __init__(self, stock: int = 1_000_000) -> None:
        self.stock = stock
        self.effects: dict[str, int] = {}  # message_id -> times the effect was applied
        self.calls = 0
        self.inbox: dict[str, Reply] = {}
        self.fail: Callable[[Command], BaseException | None] = lambda _c: None
        self._lock = asyncio.Lock()

    async def handle(self, cmd: Command) -> Reply:
        self.calls += 1
        error = self.fail(cmd)
        if error is not None:
            raise error
        async with self._lock:
            recorded = self.inbox.get(cmd.message_id)
            if recorded is not None:
                return recorded
            qty = int(cmd.payload["qty"])  # type: ignore[index,call-overload]
            self.stock -= qty
            self.effects[cmd.message_id] = self.effects.get(cmd.message_id, 0) + 1
            reply = Reply.success(cmd, {"reserved": qty, "n": cmd.payload["n"]})  # type: ignore[index,call-overload]
            self.inbox[cmd.message_id] = reply
            return reply


class Replies:
    """The engine's reply handler in tests: records every reply, wakes waiters."""

    def __init__(self) -> None:
        self.received: list[Reply] = []
        self._changed = asyncio.Condition()
        self.before: Callable[[Reply], Awaitable[None]] | None = None

    async def __call__(self, reply: Reply) -> None:
        if self.before is not None:
            await self.before(reply)
        async with self._changed:
            self.received.append(reply)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Reply]], bool]) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.received))

        await asyncio.wait_for(wait(), DEADLINE)

    def ids(self) -> set[str]:
        return {r.message_id for r in self.received}


async def until(predicate: Callable[[], Any], what: str) -> None:
    """Poll a condition that no event signals (a broker-side count)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await _value(predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _value(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every ready message off ``queue`` (acked)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=True)
        out = []
        while (message := await q.get(no_ack=True, fail=False)) is not None:
            out.append(message)
        return out
    finally:
        await connection.close()


async def queue_depth(url: str, queue: str) -> int:
    """Ready messages on ``queue`` (a passive declare)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def publish_raw(url: str, routing_key: str, body: bytes, message_id: str) -> None:
    """Publish bytes to the command exchange as a misbehaving producer would."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("saga_events")
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, delivery_mode=2), routing_key
        )
    finally:
        await connection.close()


def body_json(message: aio_pika.abc.AbstractIncomingMessage) -> Any:
    return json.loads(message.body)


async def drop_connections(vhost_url: str) -> int:
    """Close every client connection to ``vhost_url``'s vhost from the broker side (as a
    network failure or a broker restart would), leaving other vhosts' connections alone."""
    import servers

    vhost = vhost_url.rsplit("/", 1)[1]
    listing = await servers.rabbitmqctl("list_connections", "pid", "vhost")
    pids = [
        line.split("\t")[0] for line in listing.splitlines() if line.split("\t")[-1:] == [vhost]
    ]
    for pid in pids:
        await servers.rabbitmqctl("close_connection", pid, "sagaway test: connection dropped")
    return len(pids)
