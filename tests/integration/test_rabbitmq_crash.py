"""A participant killed -9 after its commit and before its reply, over RabbitMQ: the broker
redelivers the unacked command to the next consumer, whose inbox answers with the recorded
reply; the effect stays single (read from the participant's own tables)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

import servers
from rabbitkit import Replies
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.testing.transport_contract import Bank, bank_participant
from sagaway.transport.rabbitmq import RabbitDispatcher

CHILD = Path(__file__).with_name("rabbit_crash_participant.py")


@pytest.mark.slow
async def test_participant_killed_after_commit_before_reply(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'bank.db'}"
    async with servers.fresh_rabbit_vhost("crash") as url:
        bank = Bank(bank_participant(database))
        await asyncio.to_thread(bank.setup)
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), url, database, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            assert (await asyncio.wait_for(child.stdout.readline(), 60)).strip() == b"ready"
            replies = Replies()
            async with RabbitDispatcher(url, participants=("bank",)) as dispatcher:
                dispatcher.on_reply(replies)
                command = bank.command("debit", {"account": "alice", "amount": 30})
                await dispatcher.publish([command.to_outbox(0.0)])
                line = await asyncio.wait_for(child.stdout.readline(), 60)
                assert line.strip() == f"committed {command.message_id}".encode()
                child.send_signal(signal.SIGKILL)
                await child.wait()
                assert bank.balance() == 70  # committed before the kill
                assert replies.received == []  # ... and never answered
                async with RabbitParticipant(
                    bank.participant.handle, url, queue="bank", participants=("bank",)
                ) as successor:
                    await replies.wait_for(lambda got: len(got) == 1)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await bank.participant.close()

    [reply] = replies.received
    assert reply.ok
    assert reply.output == {"account": "alice", "balance": 70}  # the recorded reply
    assert bank.balance() == 70
    assert bank.effects(command.message_id) == 1
    assert successor.stats.handled == 1
