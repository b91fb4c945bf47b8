"""Serve a participant over RabbitMQ: consume its queue, answer each command on the reply key.

Per delivery (manual ack, at most ``prefetch`` in flight)::

    parse -> await handle(command) -> publish the Reply (persistent, confirmed) -> ack

``handle`` commits the participant's effect and its inbox row in one transaction (the
participant library's ``Participant.handle``) and answers a redelivered command with the
recorded reply, so the two crash windows are safe: dying after the commit and before the reply
means a redelivery, answered from the inbox; dying after the reply and before the ack means a
second reply, which the engine finds stale and drops.

Failures:

* cannot be handled, ever (not JSON, not a command, addressed to another participant, or
  ``handle`` raised one of the ``poison`` exception types, e.g. an unknown command): rejected
  without requeue, so it lands in the dead-letter queue; a log line and ``stats.dead_lettered``;
* anything else ``handle`` raises (its database is down, ...) or a reply that RabbitMQ did not
  confirm: nack with requeue, up to ``max_deliveries`` deliveries (counted as described in
  ``sagaway.transport.rabbitmq``), then dead-lettered.

Business failures are not errors here: ``handle`` returns ``Reply.failure`` and it travels
like any reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

from aio_pika.abc import AbstractChannel, AbstractExchange

from sagaway.transport._delivery import Delivery
from sagaway.transport.base import Command, Reply
from sagaway.transport.rabbitmq import (
    DEFAULT_URL,
    AmqpLink,
    Consumer,
    DeliveryStats,
    Topology,
)

__all__ = ["CommandHandler", "RabbitParticipant", "serve_rabbitmq"]

log = logging.getLogger("sagaway.participant.rabbitmq")

CommandHandler = Callable[[Command], Awaitable[Reply]]


class RabbitParticipant:
    """One participant's consumer. ``async with RabbitParticipant(handle, url, queue=...)``,
    or ``start()`` / ``stop()``; ``stats`` counts handled, requeued and dead-lettered."""

    def __init__(
        self,
        handle: CommandHandler,
        url: str = DEFAULT_URL,
        *,
        queue: str = "inventory",
        prefetch: int = 32,
        poison: tuple[type[BaseException], ...] = (LookupError,),
        exchange: str = "saga_events",
        reply_key: str = "saga.reply",
        participants: Sequence[str] = ("payment", "inventory", "shipping"),
        queue_type: str = "quorum",
        max_deliveries: int = 10,
        publish_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        drain_timeout: float = 10.0,
    ) -> None:
        if queue not in participants:
            participants = (*participants, queue)
        self.handle = handle
        self.queue = queue
        self.poison = poison
        self.topology = Topology(
            exchange=exchange,
            participants=tuple(participants),
            reply_key=reply_key,
            queue_type=queue_type,
            max_deliveries=max_deliveries,
        )
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self._consumer = Consumer(queue, self.topology, self._on_message)
        self._link = AmqpLink(
            url, self.topology, prefetch=prefetch, on_connect=self._on_connect, name=queue
        )

    @property
    def stats(self) -> DeliveryStats:
        """Counters: handled, requeued, dead_lettered, reconnects (metric-ready ints)."""
        return self._consumer.stats

    async def start(self) -> None:
        """Connect and start consuming; raises ``TransportError`` if RabbitMQ cannot be
        reached within ``connect_timeout``. After a connection loss it reconnects by itself."""
        await self._link.start(self.connect_timeout)

    async def stop(self) -> None:
        """Stop taking commands, let those in flight finish (``drain_timeout``), disconnect.
        A delivery still unsettled then is redelivered to the next consumer (the inbox
        answers it if it had committed)."""
        await self._consumer.drain(self.drain_timeout)
        await self._link.stop()

    async def __aenter__(self) -> RabbitParticipant:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_connect(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        self.stats.reconnects = self._link.reconnects
        await self._consumer.start(channel)

    async def _on_message(self, message: Delivery) -> None:
        try:
            command = Command.from_json(json.loads(message.body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            await self._consumer.dead_letter(message, f"not a command: {exc!r}")
            return
        if command.participant != self.queue:
            why = f"command for {command.participant!r} on queue {self.queue!r}"
            await self._consumer.dead_letter(message, why)
            return
        try:
            reply = await self.handle(command)
        except self.poison as exc:
            await self._consumer.dead_letter(message, f"cannot be handled: {exc!r}")
            return
        except Exception as exc:
            await self._consumer.failed(message, exc)
            return
        try:
            await self._reply(reply, message.reply_to or self.topology.reply_key)
        except Exception as exc:
            # Not confirmed: requeue; the redelivery is answered from the inbox.
            await self._consumer.failed(message, exc)
            return
        await self._consumer.ack(message)

    async def _reply(self, reply: Reply, routing_key: str) -> None:
        await self._link.publish(
            reply.to_json(),
            routing_key=routing_key,
            message_id=f"{reply.message_id}#{reply.attempt}",
            headers={},
            reply_to=None,
            timeout=self.publish_timeout,
        )


async def serve_rabbitmq(
    handle: CommandHandler,
    url: str = DEFAULT_URL,
    *,
    queue: str = "inventory",
    prefetch: int = 32,
    poison: tuple[type[BaseException], ...] = (LookupError,),
) -> None:
    """Serve ``handle`` on ``queue`` until cancelled (``checkout participant``'s loop)."""
    async with RabbitParticipant(handle, url, queue=queue, prefetch=prefetch, poison=poison):
        log.info("participant %s consuming from RabbitMQ", queue)
        await asyncio.Event().wait()
