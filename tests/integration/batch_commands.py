"""The commands of the group-commit crash test, built the same way by the test and its child."""

from __future__ import annotations

from sagaway.state import Phase
from sagaway.testing.transport_contract import Bank
from sagaway.transport.base import Command

DEBITS = 10  # alice (100) pays 1 ten times; the first is refunded; bob (0) cannot pay 5


def batch_commands(bank: Bank) -> list[Command]:
    bank.saga_id = "batch"
    debits = [
        bank.command("debit", {"account": "alice", "amount": 1}, step=f"pay{i}")
        for i in range(DEBITS)
    ]
    refund = bank.command(
        "refund",
        {"account": "alice", "amount": 1},
        step="pay0",
        forward_key=bank.key("pay0", Phase.FORWARD),
    )
    broke = bank.command("debit", {"account": "bob", "amount": 5}, step="broke")
    duplicate = debits[1]  # delivered twice in one batch
    return [*debits, refund, broke, duplicate]
