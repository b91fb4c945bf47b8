"""The transport contract over RabbitMQ (a real broker, a vhost per test): the participant
library served by ``RabbitParticipant``, reached by ``RabbitDispatcher.publish`` + ``on_reply``.

Where a message transport differs from a request/response one, the class says so by
overriding the test: a transient failure is not an exception at the sender but a redelivery
by the broker (nack + requeue), and an unknown command is not a failed reply but a dead letter
(it can never be handled; the saga times out waiting for it and compensates)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import servers
from rabbitkit import drain, queue_depth, until
from sagaway.participant import Participant
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.testing.transport_contract import Bank, TransportContract, TransportHarness
from sagaway.transport.base import Command, Reply
from sagaway.transport.rabbitmq import RabbitDispatcher


class RabbitHarness(TransportHarness):
    def __init__(self, url: str) -> None:
        self.url = url
        self.dispatcher = RabbitDispatcher(url, participants=("bank",))
        self.consumers: list[RabbitParticipant] = []
        self.replies: dict[str, list[asyncio.Future[Reply]]] = {}
        self.dispatcher.on_reply(self._on_reply)

    async def register(self, participant: Participant) -> None:
        consumer = RabbitParticipant(
            participant.handle, self.url, queue=participant.name, participants=()
        )
        await consumer.start()
        self.consumers.append(consumer)

    async def _on_reply(self, reply: Reply) -> None:
        waiters = self.replies.get(reply.message_id)
        if waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(reply)

    async def _publish_and_wait(self, command: Command, timeout: float) -> Reply:
        # One waiter per publish (the base keeps one per message id, and concurrent
        # duplicates of one command each get their own reply here).
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.replies.setdefault(command.message_id, []).append(waiter)
        await self.dispatcher.publish([command.to_outbox(0.0)])
        async with asyncio.timeout(timeout):
            return await waiter

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        await self.dispatcher.close()


class TestRabbitMQTransport(TransportContract):
    @pytest.fixture
    async def transport(self) -> AsyncIterator[RabbitHarness]:
        async with servers.fresh_rabbit_vhost("contract") as url:
            harness = RabbitHarness(url)
            await harness.dispatcher.open()
            try:
                yield harness
            finally:
                await harness.close()

    async def test_unknown_command_is_a_failed_reply(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        """Over RabbitMQ: dead-lettered (log line + counter), no reply."""
        assert isinstance(transport, RabbitHarness)
        command = bank.command("launch", {"account": "alice", "amount": 1})
        await transport.dispatcher.publish([command.to_outbox(0.0)])
        [consumer] = transport.consumers
        await until(lambda: consumer.stats.dead_lettered == 1, "the unknown command dead-lettered")
        # Counted when the consumer rejects it; the broker moves it on its own time.
        await until(
            lambda: queue_depth(transport.url, "saga_dead_letters"), "the dead letter queued"
        )
        [dead] = await drain(transport.url, "saga_dead_letters")
        assert dead.message_id == f"{command.message_id}#1"
        assert bank.effects() == 0

    async def test_transient_failure_then_retry_applies_once(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        """Over RabbitMQ the broker redelivers (nack + requeue): the first call already gets
        the reply; a re-send by the engine (attempt 2) gets the recorded one."""
        assert isinstance(transport, RabbitHarness)
        bank.participant.fail_before = 1
        command = bank.command("debit", {"account": "alice", "amount": 25})
        first = await transport.call(command)
        assert first.ok, first.error
        assert transport.consumers[0].stats.requeued == 1
        again = await transport.call(bank.command("debit", command.payload, attempt=2))
        assert again.output == first.output == {"account": "alice", "balance": 75}
        assert bank.balance() == 75
        assert bank.effects(command.message_id) == 1

    async def test_reply_lost_after_commit_then_retry_gets_the_recorded_reply(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        """The participant fails after its commit: requeued, the redelivery is answered from
        the inbox, the effect stays single."""
        assert isinstance(transport, RabbitHarness)
        bank.participant.lose_replies = 1
        command = bank.command("debit", {"account": "alice", "amount": 25})
        reply = await transport.call(command)
        assert reply.ok, reply.error
        assert reply.output == {"account": "alice", "balance": 75}
        assert transport.consumers[0].stats.requeued == 1
        assert bank.balance() == 75
        assert bank.effects(command.message_id) == 1


@pytest.fixture
def participant_database(tmp_path: Path) -> str:
    """SQLite only: the participant's database is not the transport's business (the other
    transports run the suite on PostgreSQL too), and each RabbitMQ test pays for a vhost."""
    return f"sqlite:///{tmp_path / 'participant.db'}"
