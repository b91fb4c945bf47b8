"""RabbitMQ transport (aio-pika): the engine publishes commands, participants reply by message.

Topology (every side declares all of it, idempotently, on each (re)connect, so start order does
not matter)::

    saga_events        durable topic exchange; commands are routed by their topic
      payment    <- payment.*      durable queues, one per participant
      inventory  <- inventory.*
      shipping   <- shipping.*
      saga_replies <- saga.reply   durable reply queue, shared by every engine process
    saga_events.dlx    durable fanout exchange, every queue's dead-letter exchange
      saga_dead_letters            messages that can never be handled (kept for an operator)

Guarantees, and where they come from:

* nothing lost: commands and replies are persistent, published ``mandatory`` on a confirm
  channel; ``publish`` returns only once the broker confirmed every message and raises
  ``TransportError`` otherwise (nack, unroutable, timeout, connection lost), so the engine's
  outbox keeps the message and publishes it again;
* nothing doubled: a message is acknowledged only after its handler returned (the participant's
  inbox commit, the engine's reply transition); a redelivery after a crash or a broker restart is
  deduped by the participant's inbox or found stale by the engine;
* poison: a message that cannot be parsed is rejected without requeue and lands in the
  dead-letter queue, with a log line and a count (``stats.dead_lettered``); a handler that keeps
  failing gets the message back after a pause that doubles from 50 ms to 2 s (a restarting
  database has seconds to return), and after ``max_deliveries`` deliveries (default 10, about
  9 s) it is dead-lettered the same way. A dead-lettered command or reply is not lost to the
  saga: it times out waiting, re-sends the command under the same key, and the participant's
  inbox answers;
* shutdown: ``close`` / ``stop`` cancel the consumer, let deliveries in flight finish
  (``drain_timeout``), then disconnect.

Counting deliveries: the queues are quorum queues by default, whose broker counts every return
(a nack, or a consumer that died holding the message) in the ``x-delivery-count`` header. On
classic queues (``queue_type="classic"``) the broker only says "redelivered", so the count is
kept in the consuming process, per message id: exact per process, reset when it restarts.

Reconnection: ``AmqpLink`` runs one connection at a time, re-declares the topology and restarts
its consumers after every loss, with exponential backoff (0.1 s doubling to 5 s, jittered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.abc import DeliveredMessage

from sagaway.state import JSON, OutboxMessage
from sagaway.transport._amqp_socket import COALESCING_CONNECTION
from sagaway.transport._delivery import Delivery
from sagaway.transport.base import Dispatcher, Reply, ReplyHandler, TransportError

__all__ = [
    "DEFAULT_URL",
    "AmqpLink",
    "Consumer",
    "DeliveryCollector",
    "DeliveryStats",
    "RabbitDispatcher",
    "Topology",
    "declare_topology",
    "encode",
    "requeue_delay",
    "settle",
]

log = logging.getLogger("sagaway.transport.rabbitmq")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and queue arguments; the defaults are issue 11's (seed 000's queue names)."""

    exchange: str = "saga_events"
    participants: tuple[str, ...] = ("payment", "inventory", "shipping")
    reply_queue: str = "saga_replies"
    reply_key: str = "saga.reply"
    dead_letter_exchange: str = "saga_events.dlx"
    dead_letter_queue: str = "saga_dead_letters"
    queue_type: str = "quorum"  # or "classic"
    max_deliveries: int = 10  # deliveries of one message before it is dead-lettered

    def queue_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dead_letter_exchange}
        if self.queue_type == "quorum":
            # No x-delivery-limit here: queue arguments must be identical in every process
            # that declares the queue, and max_deliveries is each consumer's own setting. An
            # operator policy (delivery-limit) can add the broker-side backstop.
            args["x-queue-type"] = "quorum"
        return args


async def declare_topology(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare the exchanges, queues and bindings (idempotent); returns the command exchange."""
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dlq = await channel.declare_queue(topology.dead_letter_queue, durable=True)
    await dlq.bind(dlx)
    exchange = await channel.declare_exchange(
        topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    args = topology.queue_arguments()
    for participant in topology.participants:
        queue = await channel.declare_queue(participant, durable=True, arguments=args)
        await queue.bind(exchange, routing_key=f"{participant}.*")
    replies = await channel.declare_queue(topology.reply_queue, durable=True, arguments=args)
    await replies.bind(exchange, routing_key=topology.reply_key)
    return exchange


def encode(
    body: JSON, *, message_id: str, headers: dict[str, str], reply_to: str | None = None
) -> aio_pika.Message:
    """A persistent JSON message (survives a broker restart once confirmed)."""
    return aio_pika.Message(
        json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=message_id,
        headers=dict(headers),
        reply_to=reply_to,
    )


@dataclass(slots=True)
class DeliveryStats:
    """Metric-ready counters of one consumer (plain ints: read them from a collector)."""

    handled: int = 0  # acknowledged after the handler returned
    requeued: int = 0  # handler failed, message returned to the queue
    dead_lettered: int = 0  # poison or out of deliveries: in the dead-letter queue
    reconnects: int = 0
    _counts: OrderedDict[str, int] = field(default_factory=OrderedDict, repr=False)

    def deliveries(self, message: Delivery, topology: Topology) -> int:
        """How many times ``message`` has been delivered, this delivery included."""
        if topology.queue_type == "quorum":
            returned = (message.headers or {}).get("x-delivery-count", 0)
            return int(returned) + 1 if isinstance(returned, int) else 1
        if not message.redelivered:
            return 1
        key = message.message_id or ""
        # Counted from the first failure this process saw; a redelivery to another process
        # starts again from 2 (the broker's flag says it was delivered at least once before).
        count = self._counts.get(key, 1) + 1
        self._counts[key] = count
        self._counts.move_to_end(key)
        while len(self._counts) > 10_000:
            self._counts.popitem(last=False)
        return count


async def settle(action: Awaitable[Any]) -> bool:
    """Ack / nack / reject; False when the channel is gone (the broker redelivers the message,
    and the handlers are idempotent, so there is nothing more to do)."""
    try:
        await action
    except Exception as exc:
        log.warning("could not settle a delivery (%s); the broker will redeliver it", exc)
        return False
    return True


def requeue_delay(deliveries: int) -> float:
    """How long a failed delivery is held before it is requeued: a store or database that is
    restarting gets seconds to come back, not a burst of redeliveries in milliseconds."""
    return float(min(0.05 * 2 ** (deliveries - 1), 2.0))


Callback = Callable[[Delivery], Awaitable[None]]


class Consumer:
    """Consumes one queue on each channel a link opens, with manual acks; counts outcomes
    and knows its deliveries in flight, so that ``drain`` can let them finish on shutdown."""

    def __init__(self, queue: str, topology: Topology, callback: Callback) -> None:
        self.queue = queue
        self.topology = topology
        self.callback = callback
        self.stats = DeliveryStats()
        self._channel: AbstractChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self, channel: AbstractChannel) -> None:
        """Consume on ``channel`` (a no-op when already consuming on it). On aiormq's channel
        underneath: each delivery is a ``Delivery``, not an aio-pika ``IncomingMessage``."""
        if self._channel is channel:
            return
        self._channel = channel
        underlay = self._underlay = await channel.get_underlay_channel()
        consumed = await underlay.basic_consume(self.queue, self._deliver)
        self._tag = consumed.consumer_tag

    async def drain(self, timeout: float) -> None:
        """Stop taking deliveries, then give those in flight ``timeout`` seconds to settle;
        cancel what still runs after that (unacked, so the broker redelivers it)."""
        underlay, tag = self._underlay, self._tag
        self._underlay = self._tag = None
        if underlay is not None and tag is not None:
            with contextlib.suppress(Exception):
                await underlay.basic_cancel(tag)
        pending = set(self._inflight)
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _deliver(self, message: DeliveredMessage) -> None:
        # The handler runs in a task of its own that aiormq does not await: when the
        # connection drops, aiormq cancels its consumer tasks, and a handler cut off halfway
        # (an engine between its store commit and driving the saga on) is worse than one that
        # finishes, fails to ack on the dead channel, and sees the redelivery as a duplicate.
        work = asyncio.ensure_future(self.callback(Delivery(message, message.channel)))
        self._inflight.add(work)
        work.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler of queue %s crashed: %r", self.queue, task.exception())

    async def ack(self, message: Delivery) -> None:
        if await settle(message.ack()):
            self.stats.handled += 1

    async def dead_letter(self, message: Delivery, why: str) -> None:
        """Reject without requeue: the broker moves it to the dead-letter queue."""
        self.stats.dead_lettered += 1
        log.error(
            "dead-lettering message %s from queue %s: %s",
            message.message_id,
            self.queue,
            why,
            extra={"queue": self.queue, "message_id": message.message_id, "reason": why},
        )
        await settle(message.reject(requeue=False))

    async def failed(self, message: Delivery, error: BaseException) -> None:
        """The handler failed transiently: requeue after a short pause, unless the message is
        out of deliveries (then dead-letter it)."""
        count = self.stats.deliveries(message, self.topology)
        if count >= self.topology.max_deliveries:
            await self.dead_letter(message, f"failed {count} deliveries, last: {error!r}")
            return
        self.stats.requeued += 1
        log.warning(
            "handler failed on message %s from %s (delivery %d of %d), requeued: %r",
            message.message_id,
            self.queue,
            count,
            self.topology.max_deliveries,
            error,
        )
        await asyncio.sleep(requeue_delay(count))
        await settle(message.nack(requeue=True))


OnConnect = Callable[[AbstractChannel, AbstractExchange], Awaitable[None]]


class AmqpLink:
    """One supervised connection + confirm channel: connect, declare, run ``on_connect`` (start
    consumers), wait for the loss, back off, repeat, until ``stop``."""

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        prefetch: int,
        on_connect: OnConnect | None = None,
        name: str = "sagaway",
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.topology = topology
        self.prefetch = prefetch
        self.on_connect = on_connect
        self.name = name
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.reconnects = 0
        self.last_error = ""
        self._ready = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def channel(self) -> AbstractChannel | None:
        return self._channel if self._ready.is_set() else None

    async def start(self, timeout: float) -> None:
        """Start the supervisor and wait for the first connection (``TransportError`` if it
        does not come within ``timeout``). Idempotent."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-amqp-link")
        try:
            await self.ready(timeout)
        except TransportError:
            await self.stop()
            raise

    async def ready(self, timeout: float) -> AbstractExchange:
        """The command exchange on a live confirm channel, waiting up to ``timeout`` for one."""
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                why = f": {self.last_error}" if self.last_error else ""
                raise TransportError(
                    f"RabbitMQ at {_redact(self.url)} not reachable within {timeout} s{why}"
                ) from None
        assert self._exchange is not None
        return self._exchange

    async def publish(
        self,
        body: JSON,
        *,
        routing_key: str,
        message_id: str,
        headers: dict[str, str],
        reply_to: str | None,
        timeout: float,
    ) -> None:
        """``encode(body, ...)`` published, confirmed (else raises), on aiormq's channel: an
        aio-pika ``Message`` cost ~3x the properties themselves (its attribute guards)."""
        await self.ready(timeout)
        channel = self._underlay
        assert channel is not None
        await channel.basic_publish(
            json.dumps(body, separators=(",", ":")).encode(),
            exchange=self.topology.exchange,
            routing_key=routing_key,
            properties=aiormq.spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=PERSISTENT,
                message_id=message_id,
                headers=dict(headers),
                reply_to=reply_to,
            ),
            mandatory=True,  # unroutable (no queue bound) raises instead of vanishing
            timeout=timeout,
        )

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            connection: AbstractConnection | None = None
            try:
                connection = await aio_pika.connect(
                    self.url, timeout=10, connection_class=COALESCING_CONNECTION
                )
                lost: asyncio.Future[BaseException | None] = loop.create_future()

                def on_lost(
                    _sender: Any,
                    exc: BaseException | None = None,
                    lost: asyncio.Future[BaseException | None] = lost,
                ) -> None:
                    if not lost.done():
                        lost.set_result(exc)

                connection.close_callbacks.add(on_lost)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                channel.close_callbacks.add(on_lost)
                await channel.set_qos(prefetch_count=self.prefetch)
                exchange = await declare_topology(channel, self.topology)
                if self.on_connect is not None:
                    await self.on_connect(channel, exchange)
                self._underlay = await channel.get_underlay_channel()
                self._channel, self._exchange = channel, exchange
                self._ready.set()
                self.last_error = ""
                if failures:
                    log.info("%s: reconnected to RabbitMQ", self.name)
                failures = 0
                await lost
                self.reconnects += 1
                log.warning(
                    "%s: RabbitMQ connection lost (%s), reconnecting", self.name, lost.result()
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self.max_backoff, self.min_backoff * 2 ** min(failures - 1, 10))
                delay *= random.uniform(0.5, 1.0)  # jitter: engines do not reconnect in step
                log.warning(
                    "%s: RabbitMQ unavailable (%s); retrying in %.2f s", self.name, exc, delay
                )
                await asyncio.sleep(delay)
            finally:
                self._ready.clear()
                self._channel = self._exchange = self._underlay = None
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(connection.close())


def _redact(url: str) -> str:
    """The URL without its password (for messages)."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.partition(':')[0]}:***@{tail}"


class RabbitDispatcher(Dispatcher):
    """The engine's side: ``publish`` outbox messages (confirmed), ``on_reply`` consumes the
    reply queue and acks each reply after the engine's handler has applied it."""

    parks = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        exchange: str = "saga_events",
        reply_queue: str = "saga_replies",
        reply_key: str = "saga.reply",
        participants: Sequence[str] = ("payment", "inventory", "shipping"),
        queue_type: str = "quorum",
        max_deliveries: int = 10,
        prefetch: int = 64,
        publish_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self.topology = Topology(
            exchange=exchange,
            participants=tuple(participants),
            reply_queue=reply_queue,
            reply_key=reply_key,
            queue_type=queue_type,
            max_deliveries=max_deliveries,
        )
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.drain_timeout = drain_timeout
        self._handler: ReplyHandler | None = None
        self._replies = Consumer(reply_queue, self.topology, self._on_message)
        self._link = AmqpLink(
            url, self.topology, prefetch=prefetch, on_connect=self._on_connect, name="engine"
        )

    @property
    def stats(self) -> DeliveryStats:
        """The reply consumer's counters (handled, requeued, dead_lettered, reconnects)."""
        return self._replies.stats

    async def open(self) -> None:
        await self._link.start(self.connect_timeout)

    async def close(self) -> None:
        """Stop taking replies, let those being applied finish (``drain_timeout``), then
        disconnect."""
        await self._replies.drain(self.drain_timeout)
        await self._link.stop()

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        link = self._link
        await link.ready(self.publish_timeout)
        reply_to = self.topology.reply_key
        results = await asyncio.gather(
            *(
                link.publish(
                    m.body,
                    routing_key=m.topic,
                    message_id=m.id,
                    headers=m.headers,
                    reply_to=reply_to,
                    timeout=self.publish_timeout,
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        failed = [
            (m, r) for m, r in zip(messages, results, strict=True) if isinstance(r, BaseException)
        ]
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError  # our caller is being cancelled: not a publish failure
        if failed:
            message, error = failed[0]
            raise TransportError(
                f"{len(failed)} of {len(messages)} messages not confirmed by RabbitMQ "
                f"(first: {message.id} to {message.topic}: {error!r})"
            ) from error

    def on_reply(self, handler: ReplyHandler) -> None:
        self._handler = handler
        channel = self._link.channel
        if channel is not None:
            # Registered after open: start consuming on the live channel now; later
            # connections start it in _on_connect.
            task = asyncio.get_running_loop().create_task(self._replies.start(channel))
            task.add_done_callback(_log_failure)

    async def _on_connect(self, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        self.stats.reconnects = self._link.reconnects
        if self._handler is not None:
            await self._replies.start(channel)

    async def _on_message(self, message: Delivery) -> None:
        try:
            reply = Reply.from_json(json.loads(message.body))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            await self._replies.dead_letter(message, f"not a reply: {exc!r}")
            return
        handler = self._handler
        assert handler is not None  # consuming starts only once a handler is registered
        try:
            await handler(reply)
        except Exception as exc:
            await self._replies.failed(message, exc)
            return
        await self._replies.ack(message)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not start consuming replies: %r", task.exception())


class DeliveryCollector:
    """A Prometheus collector over consumers' counters (needs ``prometheus-client``)::

        REGISTRY.register(DeliveryCollector(replies=dispatcher.stats))
        REGISTRY.register(DeliveryCollector(inventory=participant.stats))

    exposes ``sagaway_rabbitmq_deliveries_total{queue,outcome}`` (outcome: handled, requeued,
    dead_lettered) and ``sagaway_rabbitmq_reconnects_total{queue}``, read at scrape time."""

    def __init__(self, **stats: DeliveryStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        deliveries = CounterMetricFamily(
            "sagaway_rabbitmq_deliveries",
            "Deliveries consumed from RabbitMQ, by how they were settled",
            labels=["queue", "outcome"],
        )
        reconnects = CounterMetricFamily(
            "sagaway_rabbitmq_reconnects",
            "Connections to RabbitMQ re-established after a loss",
            labels=["queue"],
        )
        for queue, stats in self.stats.items():
            deliveries.add_metric([queue, "handled"], stats.handled)
            deliveries.add_metric([queue, "requeued"], stats.requeued)
            deliveries.add_metric([queue, "dead_lettered"], stats.dead_lettered)
            reconnects.add_metric([queue], stats.reconnects)
        yield deliveries
        yield reconnects
