"""The dead-letter queue, for an operator: list what it holds, replay messages to where they
were headed, or discard them.

A message lands in ``saga_dead_letters`` when it can never be handled (unparseable, an unknown
command, out of deliveries). Once the cause is mended (a participant deployed with the missing
handler, a database back), replaying it is safe: the copy keeps the message id, so a
participant's inbox answers a command it already applied with the recorded reply, and the
engine finds a reply for a step it no longer waits for stale.

Replay publishes the copy on a confirm channel and acknowledges the dead letter only after the
broker confirmed the copy: a crash in between leaves both, and the duplicate is deduped by its
message id like any redelivery. Messages not selected are left in the queue, in their order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from sagaway.transport.base import TransportError
from sagaway.transport.rabbitmq import DEFAULT_URL, Topology, declare_topology

# Headers the broker adds when it dead-letters a message; the replayed copy starts afresh.
_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue")
_DEATH_PREFIXES = ("x-first-death-", "x-last-death-")
_PREVIEW = 120
_REPLAYS = "x-sagaway-replays"


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter queue, as the broker recorded its death."""

    message_id: str
    exchange: str  # where it was first published
    routing_key: str  # the topic it was published with (payment.start, saga.reply, ...)
    queue: str  # the queue it died in
    reason: str  # rejected (unknown, unparseable, out of deliveries), expired, ...
    deaths: int  # times it was dead-lettered since it was last published
    replays: int  # times an operator replayed it already
    died_at: datetime | None
    preview: str  # the start of its body, for a person to recognise it

    def as_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "queue": self.queue,
            "reason": self.reason,
            "deaths": self.deaths,
            "replays": self.replays,
            "died_at": self.died_at.isoformat() if self.died_at else None,
            "preview": self.preview,
        }


def _deaths(headers: dict[str, Any]) -> list[dict[str, Any]]:
    raw = headers.get("x-death")
    return [dict(d) for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """What the broker's ``x-death`` header says about ``message``."""
    headers: dict[str, Any] = dict(message.headers or {})
    deaths = _deaths(headers)
    first = deaths[0] if deaths else {}
    keys = first.get("routing-keys") or [message.routing_key or ""]
    died = first.get("time")
    body = message.body.decode("utf-8", errors="replace")
    return DeadLetter(
        message_id=message.message_id or "",
        exchange=str(first.get("exchange") or headers.get("x-first-death-exchange") or ""),
        routing_key=str(keys[0]),
        queue=str(first.get("queue") or headers.get("x-first-death-queue") or ""),
        reason=str(first.get("reason") or "unknown"),
        deaths=sum(int(d.get("count", 1)) for d in deaths),
        replays=_replays(headers),
        died_at=died if isinstance(died, datetime) else None,
        preview=body if len(body) <= _PREVIEW else body[: _PREVIEW - 1] + "…",
    )


def _replays(headers: dict[str, Any]) -> int:
    value = headers.get(_REPLAYS)
    return value if isinstance(value, int) else 0


def _revived(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers: dict[str, Any] = {
        key: value
        for key, value in (message.headers or {}).items()
        if key not in _DEATH_HEADERS and not key.startswith(_DEATH_PREFIXES)
    }
    headers[_REPLAYS] = _replays(dict(message.headers or {})) + 1
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class DeadLetters:
    """The dead-letter queue of one broker (vhost) and topology."""

    def __init__(self, url: str = DEFAULT_URL, topology: Topology | None = None) -> None:
        self.url = url
        self.topology = topology or Topology()

    @asynccontextmanager
    async def _queue(self) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue]]:
        try:
            connection = await aio_pika.connect(self.url, timeout=10)
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            raise TransportError(f"cannot reach RabbitMQ at {self.url}: {exc}") from exc
        try:
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel, self.topology)
            queue = await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
            yield channel, queue
        finally:
            # Closing returns every message taken and not acknowledged to the queue.
            await connection.close()

    async def _each(
        self, visit: Callable[[AbstractChannel, AbstractIncomingMessage], Any], limit: int | None
    ) -> None:
        async with self._queue() as (channel, queue):
            # Only the messages there now: a replayed message that dies again joins the tail
            # and must not be met (and replayed) again in this pass.
            ready = queue.declaration_result.message_count or 0
            for _ in range(ready if limit is None else min(limit, ready)):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    return
                await visit(channel, message)

    async def peek(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first; the queue is left as it was."""
        found: list[DeadLetter] = []

        async def keep(_channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
            found.append(describe(message))

        await self._each(keep, limit)
        return found

    async def replay(self, message_ids: Collection[str] | None = None) -> list[DeadLetter]:
        """Publish each selected dead letter (all when ``message_ids`` is None) again to the
        exchange and routing key it first had; returns what was replayed."""
        replayed: list[DeadLetter] = []

        async def revive(channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
            letter = describe(message)
            if message_ids is not None and letter.message_id not in message_ids:
                return
            exchange = (
                await channel.get_exchange(letter.exchange, ensure=True)
                if letter.exchange
                else channel.default_exchange
            )
            try:
                await exchange.publish(
                    _revived(message), routing_key=letter.routing_key, mandatory=True, timeout=10
                )
            except (TimeoutError, aio_pika.exceptions.AMQPError) as exc:
                raise TransportError(
                    f"{letter.message_id} to {letter.routing_key} not confirmed: {exc!r}; "
                    f"replayed before it: {len(replayed)}"
                ) from exc
            await message.ack()
            replayed.append(letter)

        await self._each(revive, None)
        return replayed

    async def discard(self, message_ids: Collection[str]) -> list[DeadLetter]:
        """Remove the named dead letters for good; returns what was removed."""
        dropped: list[DeadLetter] = []

        async def drop(_channel: AbstractChannel, message: AbstractIncomingMessage) -> None:
            letter = describe(message)
            if letter.message_id in message_ids:
                await message.ack()
                dropped.append(letter)

        await self._each(drop, None)
        return dropped


def to_json(letters: list[DeadLetter]) -> str:
    return json.dumps([letter.as_json() for letter in letters], indent=2)
