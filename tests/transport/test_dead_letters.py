"""The dead-letter queue tools (``sagaway.transport.dead_letters``, ``sagaway dead-letters``)
against a real broker, a vhost per test: a command the participant cannot handle is
dead-lettered; once the handler is deployed, a replay applies it exactly once (twice replayed
copies included) and its reply reaches the engine's reply queue; discard removes for good."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel
from sqlalchemy.engine import Connection
from typer.testing import CliRunner

import servers
from rabbitkit import Replies, until
from sagaway.cli import app
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.testing.transport_contract import Bank, Debit, bank_participant
from sagaway.transport.base import Command
from sagaway.transport.dead_letters import DeadLetters
from sagaway.transport.rabbitmq import RabbitDispatcher

runner = CliRunner()


class Launched(BaseModel):
    account: str


@dataclass
class Broker:
    url: str
    bank: Bank
    consumer: RabbitParticipant
    dispatcher: RabbitDispatcher
    replies: Replies

    async def send(self, command: Command) -> None:
        await self.dispatcher.publish([command.to_outbox(0.0)])

    async def dead_lettered(self, n: int) -> None:
        await until(lambda: self.consumer.stats.dead_lettered >= n, f"{n} dead letters")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with servers.fresh_rabbit_vhost("dlq") as url:
        bank = Bank(bank_participant(f"sqlite:///{tmp_path / 'bank.db'}"))
        bank.setup()
        consumer = RabbitParticipant(bank.participant.handle, url, queue="bank", participants=())
        dispatcher = RabbitDispatcher(url, participants=("bank",))
        replies = Replies()
        dispatcher.on_reply(replies)
        await dispatcher.open()
        await consumer.start()
        try:
            yield Broker(url, bank, consumer, dispatcher, replies)
        finally:
            await consumer.stop()
            await dispatcher.close()


def deploy_launch(bank: Bank) -> None:
    """The fix an operator deploys before replaying: a handler for ``launch``."""

    @bank.participant.handler("launch")
    def launch(conn: Connection, payload: Debit, command: Command) -> Launched:
        from sqlalchemy import insert

        from sagaway.testing.transport_contract import EFFECTS

        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="launch"))
        return Launched(account=payload.account)


async def test_an_unknown_command_is_listed_then_replayed_once_after_the_fix(
    broker: Broker,
) -> None:
    command = broker.bank.command("launch", {"account": "alice", "amount": 1})
    await broker.send(command)
    await broker.send(command)  # a redelivered copy: dead-lettered too
    await broker.dead_lettered(2)

    queue = DeadLetters(broker.url)
    letters = await queue.peek()
    assert [letter.message_id for letter in letters] == [f"{command.message_id}#1"] * 2
    first = letters[0]
    assert (first.exchange, first.routing_key, first.queue) == (
        "saga_events",
        "bank.launch",
        "bank",
    )
    assert (first.reason, first.deaths, first.replays) == ("rejected", 1, 0)
    assert first.preview.startswith('{"message_id":')
    assert len(await queue.peek()) == 2, "listing leaves the queue as it was"

    deploy_launch(broker.bank)
    replayed = await queue.replay()
    assert len(replayed) == 2
    await broker.replies.wait_for(lambda received: len(received) == 2)
    assert all(reply.ok for reply in broker.replies.received)
    assert broker.bank.effects(command.message_id) == 1, "the inbox dedupes the second copy"
    assert await queue.peek() == []


async def test_replay_and_discard_select_by_message_id(broker: Broker) -> None:
    keep = broker.bank.command("launch", {"account": "alice", "amount": 1}, step="a")
    drop = broker.bank.command("launch", {"account": "bob", "amount": 1}, step="b")
    await broker.send(keep)
    await broker.send(drop)
    await broker.dead_lettered(2)
    queue = DeadLetters(broker.url)

    dropped = await queue.discard({f"{drop.message_id}#1", "not-there"})
    assert [d.message_id for d in dropped] == [f"{drop.message_id}#1"]
    assert [d.message_id for d in await queue.peek()] == [f"{keep.message_id}#1"]

    # Replayed without the fix: it dies again, and this pass does not meet it a second time.
    again = await queue.replay({f"{keep.message_id}#1"})
    assert len(again) == 1
    await broker.dead_lettered(3)
    [dead] = await queue.peek()
    assert (dead.deaths, dead.replays) == (1, 1)
    assert broker.bank.effects() == 0


async def test_cli_lists_replays_and_refuses_bad_usage(broker: Broker) -> None:
    command = broker.bank.command("launch", {"account": "alice", "amount": 1})
    await broker.send(command)
    await broker.dead_lettered(1)

    def cli(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["dead-letters", *args])
        return result.exit_code, result.output

    code, out = await asyncio.to_thread(cli, "list", "--amqp", broker.url, "--json")
    assert code == 0, out
    [listed] = json.loads(out)
    assert listed["routing_key"] == "bank.launch"
    assert listed["reason"] == "rejected"

    code, out = await asyncio.to_thread(cli, "replay", "--amqp", broker.url)
    assert code == 2
    assert "--all" in out

    deploy_launch(broker.bank)
    code, out = await asyncio.to_thread(cli, "replay", "--all", "--amqp", broker.url)
    assert code == 0, out
    assert "replayed 1" in out
    await broker.replies.wait_for(lambda received: len(received) == 1)
    assert broker.bank.effects(command.message_id) == 1


def test_cli_unreachable_broker_is_a_clear_error() -> None:
    result = runner.invoke(
        app, ["dead-letters", "list", "--amqp", "amqp://guest:guest@127.0.0.1:1/"]
    )
    assert result.exit_code == 1
    assert "cannot reach RabbitMQ" in result.output
