"""A participant SIGKILLed after its commit and before its reply, over HTTP (real processes,
real SQLite and PostgreSQL): the caller sees a ``TransportError``, the restarted participant
answers the retry (same key) with the recorded reply, and the effect is applied once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sagaway.testing.transport_contract import Bank, bank_participant
from sagaway.transport.base import TransportError
from sagaway.transport.http import HttpDispatcher

SERVER = Path(__file__).with_name("bank_server.py")


@contextmanager
def bank_server(url: str, *flags: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), url, *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # bound and listening before it prints
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(30)


@pytest.mark.slow
async def test_participant_killed_after_commit_before_reply(participant_database: str) -> None:
    bank = Bank(bank_participant(participant_database))
    await asyncio.to_thread(bank.setup)
    command = bank.command("debit", {"account": "alice", "amount": 30})
    try:
        async with HttpDispatcher() as dispatcher:
            with bank_server(participant_database, "--crash-after-commit") as (proc, url):
                dispatcher.add("bank", url)
                with pytest.raises(TransportError):
                    await dispatcher.call(command, 30.0)
                assert proc.wait(30) == -9
                assert proc.stdout is not None
                assert proc.stdout.read().strip() == f"committed {command.message_id}"
            assert bank.balance() == 70  # the effect survived the kill
            assert bank.effects(command.message_id) == 1
            with bank_server(participant_database) as (_, url):
                dispatcher.add("bank", url)
                retry = bank.command("debit", command.payload, attempt=2)
                reply = await dispatcher.call(retry, 30.0)
        assert reply.ok, reply.error
        assert reply.output == {"account": "alice", "balance": 70}
        assert bank.balance() == 70
        assert bank.effects(command.message_id) == 1
    finally:
        await bank.participant.close()
