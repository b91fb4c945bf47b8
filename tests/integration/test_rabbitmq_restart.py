"""RabbitMQ stopped and started mid-run (``rabbitmqctl stop_app`` / ``start_app``): nothing
lost, nothing doubled.

An outbox-like relay keeps 32 commands in flight against a real participant (the participant
library, SQLite inbox); after 100 replies the participant is held right after its commit (the
effect durable, the reply not yet sent), the broker is stopped, the held handlers then try to
reply into a dead connection, and the broker is started again. Every command must get its
reply and have its effect applied exactly once, read from the participant's own tables.

The only test that stops the shared broker: kept short, and the broker is always started
again (other engineers' RabbitMQ tests see one brief outage, as their own reconnects allow).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import servers
from rabbitkit import Replies
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.state import OutboxMessage
from sagaway.testing.transport_contract import Bank, bank_participant
from sagaway.transport.base import Command, Reply, TransportError
from sagaway.transport.rabbitmq import RabbitDispatcher

N = 400
WINDOW = 32
START_BALANCE = 1_000_000


class Relay:
    """The engine's outbox relay, reduced: a message stays pending until ``publish`` returned
    (confirmed); a TransportError leaves it pending and it is published again later."""

    def __init__(self, dispatcher: RabbitDispatcher, commands: list[Command], replies: Replies):
        self.dispatcher = dispatcher
        self.todo = [c.to_outbox(0.0) for c in commands]
        self.replies = replies
        self.failures = 0

    async def run(self) -> None:
        sent = 0
        pending: list[OutboxMessage] = []
        while sent < len(self.todo) or pending:
            room = WINDOW - (sent - len(self.replies.ids()))
            if not pending and room > 0 and sent < len(self.todo):
                pending = self.todo[sent : sent + min(room, 8)]
                sent += len(pending)
            if pending:
                try:
                    await self.dispatcher.publish(pending)
                    pending = []
                except TransportError:
                    self.failures += 1
                    await asyncio.sleep(0.2)  # the relay's retry pace, not synchronisation
                continue
            floor = sent - WINDOW
            await self.replies.wait_for(
                lambda got, floor=floor: len({r.message_id for r in got}) > floor
            )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("broker_to_ourselves")  # it stops the broker
async def test_broker_restart_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    async with servers.fresh_rabbit_vhost("restart") as url:
        bank = Bank(bank_participant(f"sqlite:///{tmp_path / 'bank.db'}"))
        await asyncio.to_thread(bank.setup)
        await asyncio.to_thread(bank.set_balance, "alice", START_BALANCE)
        commands = [
            bank.command("debit", {"account": "alice", "amount": 1}, step=f"s{i}") for i in range(N)
        ]
        gate = asyncio.Event()
        gate.set()
        held: list[str] = []
        someone_held = asyncio.Event()

        async def handle(command: Command) -> Reply:
            reply = await bank.participant.handle(command)
            if not gate.is_set():  # committed; the reply waits for the broker to go down
                held.append(command.message_id)
                someone_held.set()
                await gate.wait()
            return reply

        replies = Replies()
        dispatcher = RabbitDispatcher(url, participants=("bank",), publish_timeout=2.0)
        dispatcher.on_reply(replies)
        consumer = RabbitParticipant(handle, url, queue="bank", participants=("bank",))
        stopped = False
        try:
            async with consumer, dispatcher:
                relay = Relay(dispatcher, commands, replies)
                relay_task = asyncio.create_task(relay.run())
                await replies.wait_for(lambda got: len(got) >= 100)
                gate.clear()
                await asyncio.wait_for(someone_held.wait(), 30)
                stopped = True
                await servers.rabbitmqctl("stop_app")
                gate.set()
                await servers.rabbitmqctl("start_app")
                stopped = False
                await asyncio.wait_for(relay_task, 120)
                await replies.wait_for(lambda got: len({r.message_id for r in got}) == N)
        finally:
            if stopped:
                with contextlib.suppress(Exception):
                    await servers.rabbitmqctl("start_app")
            await bank.participant.close()

        assert held, "the restart caught committed-but-unreplied commands"
        assert {r.message_id for r in replies.received} == {c.message_id for c in commands}
        assert all(r.ok for r in replies.received)
        assert bank.effects() == N  # one effect per command, none twice
        for message_id in held:
            assert bank.effects(message_id) == 1
        assert bank.balance() == START_BALANCE - N  # money conserved
        assert dispatcher.stats.reconnects >= 1
        assert consumer.stats.reconnects >= 1
        assert consumer.stats.dead_lettered == 0
