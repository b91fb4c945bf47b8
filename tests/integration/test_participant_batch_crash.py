"""A participant's group commit (several commands in one SQLite transaction) killed -9: inside
the transaction, nothing of the batch is durable and the redelivered commands apply once; after
the commit, before any reply left, the redeliveries get the recorded replies. Effects are read
from the participant's own tables; money is conserved."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from batch_commands import DEBITS, batch_commands
from sqlalchemy import select

from sagaway.participant import Participant
from sagaway.testing import EffectLedger
from sagaway.testing.transport_contract import EFFECTS, Bank, bank_participant
from sagaway.transport.base import Reply

CHILD = Path(__file__).with_name("participant_batch_child.py")
HERE = str(Path(__file__).parent)


async def _child(database: str, mode: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        database,
        mode,
        stdout=asyncio.subprocess.PIPE,
        env=_env(),
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def _env() -> dict[str, str]:
    """The child imports ``batch_commands`` from this directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
    return env


def _ledger(participant: Participant) -> EffectLedger:
    """The participant's effect rows, as a ledger (one call per row written)."""
    ledger = EffectLedger(dedupe=False)
    with participant.sync_engine.connect() as conn:
        for (message_id,) in conn.execute(select(EFFECTS.c.message_id)):
            ledger.apply(message_id)
    return ledger


def _check_replies(bank: Bank, replies: list[Reply]) -> None:
    *debits, refund, broke, duplicate = replies
    assert [r.ok for r in debits] == [True] * DEBITS
    assert refund.ok, refund.error
    assert not broke.ok
    assert broke.error == "insufficient funds"
    assert duplicate.output == debits[1].output  # the recorded reply, not a second debit


def _check_effects(bank: Bank) -> None:
    keys = [bank.key(f"pay{i}") for i in range(DEBITS)]
    refund_key = bank.command("refund", {}, step="pay0", forward_key=bank.key("pay0")).message_id
    _ledger(bank.participant).assert_exactly_once(*keys, refund_key)
    assert bank.balance("alice") == 100 - DEBITS + 1  # money conserved: refunded once
    assert bank.balance("bob") == 0


@pytest.mark.parametrize("mode", ["mid-batch", "after-commit"])
async def test_group_commit_killed(tmp_path: Path, mode: str) -> None:
    database = f"sqlite:///{tmp_path / 'bank.db'}"
    bank = Bank(bank_participant(database))
    await asyncio.to_thread(bank.setup)
    commands = batch_commands(bank)
    try:
        code, out = await _child(database, mode)
        assert code == -9, out
        if mode == "mid-batch":
            # The batch had written effects in its transaction; none of them survived.
            held = int(out.split("in-transaction effects ")[1].split()[0])
            assert held >= DEBITS - 1, out
            assert bank.effects() == 0
            assert bank.balance("alice") == 100
        else:
            assert f"committed {len(commands)}" in out
            _check_effects(bank)  # durable before any reply left
        # The broker redelivers every unacknowledged command; then a duplicate of each.
        for _ in range(2):
            replies = await asyncio.gather(*(bank.participant.handle(c) for c in commands))
            _check_replies(bank, list(replies))
            _check_effects(bank)
    finally:
        await bank.participant.close()
