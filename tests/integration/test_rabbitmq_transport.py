"""The RabbitMQ transport against a real broker, each test in a vhost of its own: commands
published from the outbox reach the participant and its reply reaches the engine's handler;
redeliveries are deduped; unconfirmed publishes raise; poison goes to the dead-letter queue;
replies are acked only after the handler returned."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import servers
from rabbitkit import (
    InboxParticipant,
    Replies,
    command,
    drain,
    drop_connections,
    publish_raw,
    queue_depth,
    until,
)
from sagaway.participant.rabbitmq import RabbitParticipant, serve_rabbitmq
from sagaway.transport.base import Command, Reply, TransportError
from sagaway.transport.rabbitmq import RabbitDispatcher


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with servers.fresh_rabbit_vhost("amqp") as vhost_url:
        yield vhost_url


async def test_command_reaches_the_participant_and_its_reply_the_handler(url: str) -> None:
    inventory, payment = InboxParticipant(), InboxParticipant()
    replies = Replies()
    async with (
        RabbitParticipant(inventory.handle, url, queue="inventory"),
        RabbitParticipant(payment.handle, url, queue="payment"),
        RabbitDispatcher(url) as dispatcher,
    ):
        dispatcher.on_reply(replies)
        commands = [command(n) for n in range(20)] + [
            command(n, "payment", "start") for n in range(20, 25)
        ]
        await dispatcher.publish([c.to_outbox(at=0.0) for c in commands])
        await replies.wait_for(lambda got: len(got) == 25)

    assert replies.ids() == {c.message_id for c in commands}
    assert all(r.ok for r in replies.received)
    by_id = {r.message_id: r for r in replies.received}
    assert by_id["saga-3:reserve:forward"].output == {"reserved": 1, "n": 3}
    assert by_id["saga-21:reserve:forward"].participant == "payment"
    assert inventory.stock == 1_000_000 - 20
    assert payment.stock == 1_000_000 - 5
    assert await queue_depth(url, "saga_replies") == 0  # every reply acked


async def test_serve_rabbitmq_serves_until_cancelled(url: str) -> None:
    participant, replies = InboxParticipant(), Replies()
    server = asyncio.create_task(serve_rabbitmq(participant.handle, url, queue="shipping"))
    try:
        async with RabbitDispatcher(url) as dispatcher:
            dispatcher.on_reply(replies)
            await dispatcher.publish([command(1, "shipping", "create").to_outbox(at=0.0)])
            await replies.wait_for(lambda got: len(got) == 1)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    assert replies.received[0].participant == "shipping"


async def test_handler_registered_before_open_consumes_too(url: str) -> None:
    participant, replies = InboxParticipant(), Replies()
    dispatcher = RabbitDispatcher(url)
    dispatcher.on_reply(replies)
    async with RabbitParticipant(participant.handle, url), dispatcher:
        await dispatcher.publish([command(1).to_outbox(at=0.0)])
        await replies.wait_for(lambda got: len(got) == 1)


async def test_a_duplicate_delivery_is_applied_once_and_answered_twice(url: str) -> None:
    participant, replies = InboxParticipant(), Replies()
    async with RabbitParticipant(participant.handle, url), RabbitDispatcher(url) as dispatcher:
        dispatcher.on_reply(replies)
        message = command(7).to_outbox(at=0.0)
        await dispatcher.publish([message])
        # The relay re-publishes after a crash before it deleted the row: same message id.
        await dispatcher.publish([message])
        await replies.wait_for(lambda got: len(got) == 2)

    assert participant.calls == 2
    assert participant.effects == {"saga-7:reserve:forward": 1}
    assert participant.stock == 1_000_000 - 1
    assert replies.received[0] == replies.received[1]  # the recorded reply, re-sent


async def test_publish_of_an_unroutable_topic_raises(url: str) -> None:
    async with RabbitDispatcher(url) as dispatcher:
        good = command(1).to_outbox(at=0.0)
        nowhere = command(2, participant="billing", name="charge").to_outbox(at=0.0)
        with pytest.raises(TransportError, match=r"1 of 2 messages not confirmed.*billing\.charge"):
            await dispatcher.publish([good, nowhere])
    assert await queue_depth(url, "inventory") == 1  # the routable one was taken


async def test_publish_nacked_by_the_broker_raises(url: str) -> None:
    # A queue that refuses every message makes the broker nack the publish (basic.nack).
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(
            "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
        exchange = await channel.declare_exchange("saga_events", "topic", durable=True)
        await full.bind(exchange, "full.*")
    async with RabbitDispatcher(url) as dispatcher:
        with pytest.raises(TransportError, match="not confirmed"):
            await dispatcher.publish([command(1, participant="full", name="x").to_outbox(at=0)])


async def test_open_and_publish_without_a_broker_raise_transport_error() -> None:
    dispatcher = RabbitDispatcher("amqp://guest:guest@127.0.0.1:1/", connect_timeout=0.5)
    with pytest.raises(TransportError, match="not reachable"):
        await dispatcher.open()
    with pytest.raises(TransportError, match="not reachable"):
        await RabbitDispatcher("amqp://guest:guest@127.0.0.1:1/", publish_timeout=0.2).publish(
            [command(1).to_outbox(at=0.0)]
        )


async def test_poison_messages_are_dead_lettered_and_counted(url: str) -> None:
    participant = InboxParticipant()
    participant.fail = lambda c: (
        LookupError(f"no command {c.command!r}") if c.command == "zap" else None
    )
    async with (
        RabbitParticipant(participant.handle, url) as consumer,
        RabbitDispatcher(url) as dispatcher,
    ):
        await publish_raw(url, "inventory.reserve", b"{not json", message_id="garbage")
        await publish_raw(url, "inventory.reserve", b'{"saga_id": "x"}', message_id="partial")
        wrong = command(3, participant="payment")  # body says payment, routed to inventory
        await publish_raw(url, "inventory.reserve", _raw(wrong), message_id="misrouted")
        await dispatcher.publish([command(4, name="zap").to_outbox(at=0.0)])
        await until(lambda: consumer.stats.dead_lettered == 4, "four dead letters")

    dead = await drain(url, "saga_dead_letters")
    assert sorted(m.message_id or "" for m in dead) == sorted(
        ["garbage", "partial", "misrouted", "saga-4:reserve:forward#1"]
    )
    assert all(m.headers["x-death"] for m in dead)  # dead-lettered by the broker, not lost
    assert participant.effects == {}
    assert consumer.stats.handled == 0


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_transient_failure_is_retried_then_dead_lettered(url: str, queue_type: str) -> None:
    """Quorum queues: the broker's x-delivery-count; classic: counted in the consumer."""
    participant, replies = InboxParticipant(), Replies()
    failures: dict[str, int] = {}

    def flaky(c: Command) -> BaseException | None:
        failures[c.message_id] = failures.get(c.message_id, 0) + 1
        if c.saga_id == "saga-1" and failures[c.message_id] == 1:
            return ConnectionError("database restarting")  # once: then it works
        if c.saga_id == "saga-2":
            return ConnectionError("database gone")  # always
        return None

    participant.fail = flaky
    async with (
        RabbitParticipant(
            participant.handle, url, max_deliveries=3, queue_type=queue_type
        ) as consumer,
        RabbitDispatcher(url, queue_type=queue_type) as dispatcher,
    ):
        dispatcher.on_reply(replies)
        await dispatcher.publish([command(1).to_outbox(0.0), command(2).to_outbox(0.0)])
        await replies.wait_for(lambda got: len(got) == 1)
        await until(lambda: consumer.stats.dead_lettered == 1, "saga-2 dead-lettered")

    assert replies.ids() == {"saga-1:reserve:forward"}
    assert failures == {"saga-1:reserve:forward": 2, "saga-2:reserve:forward": 3}
    assert consumer.stats.requeued == 1 + 2
    assert consumer.stats.handled == 1
    [dead] = await drain(url, "saga_dead_letters")
    assert dead.message_id == "saga-2:reserve:forward#1"


async def test_mismatched_queue_arguments_fail_open_with_the_reason(url: str) -> None:
    async with RabbitDispatcher(url, queue_type="classic"):
        pass
    with pytest.raises(TransportError, match=r"PRECONDITION_FAILED.*x-queue-type"):
        await RabbitDispatcher(url, queue_type="quorum", connect_timeout=1.0).open()


async def test_a_reply_is_acked_only_after_the_handler_returns(url: str) -> None:
    participant = InboxParticipant()
    entered = asyncio.Event()

    async def stuck(reply: Reply) -> None:
        entered.set()
        await asyncio.Event().wait()  # the engine dies while applying the reply

    async with RabbitParticipant(participant.handle, url):
        first = RabbitDispatcher(url, drain_timeout=0)
        first.on_reply(stuck)
        async with first:
            await first.publish([command(5).to_outbox(at=0.0)])
            await asyncio.wait_for(entered.wait(), 30)
        # Not acked: another engine gets the same reply.
        replies = Replies()
        second = RabbitDispatcher(url)
        second.on_reply(replies)
        async with second:
            await replies.wait_for(lambda got: len(got) == 1)
    assert replies.received[0].message_id == "saga-5:reserve:forward"
    assert participant.effects == {"saga-5:reserve:forward": 1}


async def test_stop_lets_a_command_in_flight_finish_and_ack(url: str) -> None:
    participant, replies = InboxParticipant(), Replies()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(c: Command) -> Reply:
        entered.set()
        await release.wait()
        return await participant.handle(c)

    consumer = RabbitParticipant(slow, url)
    async with RabbitDispatcher(url) as dispatcher:
        dispatcher.on_reply(replies)
        await consumer.start()
        await dispatcher.publish([command(11).to_outbox(at=0.0)])
        await asyncio.wait_for(entered.wait(), 30)
        stopping = asyncio.create_task(consumer.stop())
        await until(lambda: consumer._consumer._tag is None, "the consumer cancelled")
        release.set()
        await stopping
        await replies.wait_for(lambda got: len(got) == 1)
    assert consumer.stats.handled == 1  # acked before the connection closed
    assert await queue_depth(url, "inventory") == 0  # nothing left to redeliver
    assert participant.effects == {"saga-11:reserve:forward": 1}


async def test_a_dropped_connection_lets_the_handler_finish_and_redelivers(url: str) -> None:
    """The connection drops while the engine applies a reply: the handler is not cut off
    halfway; its ack fails on the dead channel, and the reply comes again after the
    reconnect (the engine finds it stale)."""
    participant = InboxParticipant()
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []
    finished: list[str] = []

    async def apply(reply: Reply) -> None:
        calls.append(reply.message_id)
        entered.set()
        await release.wait()
        finished.append(reply.message_id)

    async with RabbitParticipant(participant.handle, url), RabbitDispatcher(url) as dispatcher:
        dispatcher.on_reply(apply)
        await dispatcher.publish([command(12).to_outbox(at=0.0)])
        await asyncio.wait_for(entered.wait(), 30)
        assert await drop_connections(url) >= 2  # the engine's and the participant's
        await until(lambda: dispatcher._link.reconnects >= 1, "the engine saw the drop")
        release.set()
        await until(lambda: len(finished) == 2, "the reply applied, then redelivered")
        assert dispatcher.stats.reconnects >= 1
    assert calls == ["saga-12:reserve:forward"] * 2
    assert participant.effects == {"saga-12:reserve:forward": 1}


async def test_a_failing_reply_handler_gets_the_reply_again(url: str) -> None:
    participant, replies = InboxParticipant(), Replies()
    seen: list[str] = []

    async def fail_once(reply: Reply) -> None:
        seen.append(reply.message_id)
        if len(seen) == 1:
            raise ConnectionError("saga store unavailable")

    replies.before = fail_once
    async with RabbitParticipant(participant.handle, url), RabbitDispatcher(url) as dispatcher:
        dispatcher.on_reply(replies)
        await dispatcher.publish([command(9).to_outbox(at=0.0)])
        await replies.wait_for(lambda got: len(got) == 1)
        assert dispatcher.stats.requeued == 1
    assert seen == ["saga-9:reserve:forward"] * 2


async def test_an_unparseable_reply_is_dead_lettered(url: str) -> None:
    replies = Replies()
    async with RabbitDispatcher(url) as dispatcher:
        dispatcher.on_reply(replies)
        await publish_raw(url, "saga.reply", b"[1, 2]", message_id="bad-reply")
        await until(lambda: dispatcher.stats.dead_lettered == 1, "the bad reply dead-lettered")
    [dead] = await drain(url, "saga_dead_letters")
    assert dead.message_id == "bad-reply"
    assert replies.received == []


def _raw(c: Command) -> bytes:
    import json

    return json.dumps(c.to_json()).encode()
