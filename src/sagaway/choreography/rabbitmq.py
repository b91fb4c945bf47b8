"""Domain events over RabbitMQ: the ``saga_events`` topic exchange, routing key = event type.

Topology (declared idempotently by every process on each (re)connect, next to the engine's)::

    saga_events                  durable topic exchange (the engine's commands use it too)
      choreo.<service>  <- each event type the service reacts to (durable queue per service)
      choreo.monitor    <- *     every one-word key: all domain events, no commands
                                 ("payment.start") and no replies ("saga.reply")

Events are persistent, published ``mandatory`` on a confirm channel (``publish`` returns only
once the broker confirmed them; the monitor's queue makes every event routable). A delivery is
acknowledged after its handler returned (the service's inbox commit, or the monitor's write);
a handler that raises gets the message back after a pause and, after ``max_deliveries``, it is
dead-lettered; a body that is not an event is dead-lettered at once (``saga_dead_letters``).
The connection is supervised by the transport's ``AmqpLink`` (reconnects with backoff).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aio_pika.abc import AbstractChannel, AbstractExchange

from sagaway.choreography.bus import EventBus, Subscription
from sagaway.choreography.events import DomainEvent
from sagaway.transport._delivery import Delivery
from sagaway.transport.base import TransportError
from sagaway.transport.rabbitmq import DEFAULT_URL, AmqpLink, Callback, Consumer, Topology, encode

MONITOR_BINDING = "*"


class RabbitBus(EventBus):
    """The RabbitMQ event bus (see the module docstring). ``prefix``: the services' queue
    names (``choreo.payment``)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        exchange: str = "saga_events",
        prefix: str = "choreo",
        monitor_queue: str = "choreo.monitor",
        queue_type: str = "quorum",
        max_deliveries: int = 10,
        prefetch: int = 32,
        publish_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        drain_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.monitor_queue = monitor_queue
        self.topology = Topology(
            exchange=exchange,
            participants=(),
            queue_type=queue_type,
            max_deliveries=max_deliveries,
        )
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self._consumers: dict[str, Consumer] = {}
        self._link = AmqpLink(
            url, self.topology, prefetch=prefetch, on_connect=self._on_connect, name="events"
        )

    def queue_of(self, sub: Subscription) -> str:
        return self.monitor_queue if sub.types is None else f"{self.prefix}.{sub.name}"

    async def open(self) -> None:
        for sub in self.subscriptions:
            if sub.name not in self._consumers:
                self._consumers[sub.name] = Consumer(
                    self.queue_of(sub), self.topology, self._callback(sub)
                )
        await self._link.start(self.connect_timeout)

    async def close(self) -> None:
        for consumer in self._consumers.values():
            await consumer.drain(self.drain_timeout)
        await self._link.stop()

    async def _on_connect(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        args = self.topology.queue_arguments()
        monitor = await channel.declare_queue(self.monitor_queue, durable=True, arguments=args)
        await monitor.bind(exchange, routing_key=MONITOR_BINDING)
        for sub in self.subscriptions:
            if sub.types is None:
                continue
            queue = await channel.declare_queue(self.queue_of(sub), durable=True, arguments=args)
            for event_type in sorted(sub.types):
                await queue.bind(exchange, routing_key=event_type)
        for consumer in self._consumers.values():
            await consumer.start(channel)

    def _callback(self, sub: Subscription) -> Callback:
        async def on_message(message: Delivery) -> None:
            consumer = self._consumers[sub.name]
            try:
                event = DomainEvent.from_json(json.loads(message.body))
            except Exception as exc:
                await consumer.dead_letter(message, f"not a domain event: {exc!r}")
                return
            try:
                await sub.handler(event)
            except Exception as exc:
                await consumer.failed(message, exc)
                return
            await consumer.ack(message)

        return on_message

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        if not events:
            return
        exchange = await self._link.ready(self.publish_timeout)
        failures: list[BaseException] = []
        for event in events:  # in order: one service's events keep their order
            try:
                await exchange.publish(
                    encode(event.to_json(), message_id=event.id, headers=event.headers),
                    routing_key=event.type,
                    mandatory=True,
                    timeout=self.publish_timeout,
                )
            except Exception as exc:
                failures.append(exc)
                break
        if failures:
            raise TransportError(f"event not confirmed by RabbitMQ: {failures[0]!r}") from failures[
                0
            ]


__all__ = ["MONITOR_BINDING", "RabbitBus"]
