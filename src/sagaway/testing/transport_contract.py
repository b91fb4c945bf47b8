"""The transport contract as tests: every way of reaching a participant must pass the same ones.

A transport carries a ``Command`` to a ``Participant`` and its ``Reply`` back. Whatever the
wire, the saga engine relies on the same things: a reply for a call, a business failure as a
failed reply (not an exception), a redelivered ``message_id`` answered with the recorded reply
and its effect applied once, a tombstone refusing a forward command that arrives after its
compensation, and a transient failure surfacing as ``TransportError`` (or ``TimeoutError``)
so that a retry with the same key applies the effect once.

Subclass ``TransportContract`` and provide two fixtures:

* ``participant_database``: a SQLAlchemy URL of an empty database (or schema) for the
  participant (parametrize it over SQLite and PostgreSQL);
* ``transport``: yields a ``TransportHarness``: its ``dispatcher``, and ``register(participant)``
  which makes that participant reachable through it (start a server, a consumer...).

``TransportHarness.call`` sends a command and returns the reply: ``dispatcher.call`` for
request/response transports; for message transports (``parks=True``) it publishes the command
as an outbox message and waits for the reply the dispatcher hands to ``on_reply``.

The participant used is a small bank (``accounts``, plus an ``effects`` table that counts every
applied effect per ``message_id``), rebuilt for each test. It never sleeps; transient failures
are injected by ``FlakyParticipant`` (before the effect: the transaction rolls back; after the
commit: the reply is lost).
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.engine import Connection

from sagaway.errors import StepFailed
from sagaway.participant.core import Participant
from sagaway.participant.inbox import TOMBSTONE_ERROR
from sagaway.state import Phase
from sagaway.transport.base import Command, Dispatcher, Reply, TransportError

__all__ = [
    "Bank",
    "FlakyParticipant",
    "TransportContract",
    "TransportHarness",
    "bank_participant",
]

_metadata = MetaData()
ACCOUNTS = Table(
    "contract_accounts",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("balance", Integer, nullable=False),
)
EFFECTS = Table(  # one row per effect applied: counts prove "exactly once"
    "contract_effects",
    _metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False),
    Column("command", String(64), nullable=False),
)


class Debit(BaseModel):
    account: str
    amount: int


class Balance(BaseModel):
    account: str
    balance: int


class UnknownAccount(Exception):
    """A declared business error (``errors=``), not a ``StepFailed``."""


class TransientError(Exception):
    """What a lost connection looks like to the participant: not a business error."""


class FlakyParticipant(Participant):
    """A participant that fails transiently on demand: ``fail_before`` deliveries raise before
    the handler's effect (rolled back), ``lose_replies`` deliveries raise after the commit (the
    effect is durable but the reply never reaches the sender)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_before = 0
        self.lose_replies = 0

    async def handle(self, command: Command) -> Reply:
        reply = await super().handle(command)
        if self.lose_replies > 0:
            self.lose_replies -= 1
            raise TransientError("connection lost after the commit")
        return reply


def bank_participant(database: str, name: str = "bank") -> FlakyParticipant:
    """The contract's participant: ``debit`` (fails "insufficient funds"), ``refund``
    (compensates ``debit``); accounts ``alice`` (100) and ``bob`` (0) once ``Bank.setup`` ran."""
    bank = FlakyParticipant(name, database, errors=(UnknownAccount,))

    @bank.handler("debit")
    def debit(conn: Connection, payload: Debit, command: Command) -> Balance:
        if bank.fail_before > 0:
            bank.fail_before -= 1
            raise TransientError("connection reset by peer")
        row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == payload.account)).first()
        if row is None:
            raise UnknownAccount(f"no account {payload.account!r}")
        changed = conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == payload.account, ACCOUNTS.c.balance >= payload.amount)
            .values(balance=ACCOUNTS.c.balance - payload.amount)
        ).rowcount
        if changed != 1:
            raise StepFailed("insufficient funds")
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="debit"))
        return Balance(account=payload.account, balance=row.balance - payload.amount)

    @bank.handler("refund", compensates="debit")
    def refund(conn: Connection, payload: Debit, command: Command) -> None:
        conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == payload.account)
            .values(balance=ACCOUNTS.c.balance + payload.amount)
        )
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="refund"))

    return bank


class Bank:
    """The contract participant plus what tests read back from its database."""

    def __init__(self, participant: FlakyParticipant) -> None:
        self.participant = participant
        self.saga_id = uuid.uuid4().hex

    def setup(self) -> None:
        self.participant.create_inbox()
        engine = self.participant.sync_engine
        _metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                insert(ACCOUNTS), [{"id": "alice", "balance": 100}, {"id": "bob", "balance": 0}]
            )

    def balance(self, account: str = "alice") -> int:
        with self.participant.sync_engine.connect() as conn:
            return int(
                conn.execute(
                    select(ACCOUNTS.c.balance).where(ACCOUNTS.c.id == account)
                ).scalar_one()
            )

    def set_balance(self, account: str, balance: int) -> None:
        with self.participant.sync_engine.begin() as conn:
            conn.execute(update(ACCOUNTS).where(ACCOUNTS.c.id == account).values(balance=balance))

    def effects(self, message_id: str | None = None) -> int:
        query = select(func.count()).select_from(EFFECTS)
        if message_id is not None:
            query = query.where(EFFECTS.c.message_id == message_id)
        with self.participant.sync_engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def key(self, step: str, phase: Phase = Phase.FORWARD) -> str:
        return f"{self.saga_id}:{step}:{phase}"

    def command(
        self,
        command: str,
        payload: Any,
        *,
        step: str = "charge",
        message_id: str | None = None,
        forward_key: str | None = None,
        attempt: int = 1,
    ) -> Command:
        phase = Phase.COMPENSATION if forward_key is not None else Phase.FORWARD
        return Command(
            message_id=message_id or self.key(step, phase),
            saga_id=self.saga_id,
            saga_name="contract",
            step=step,
            phase=phase,
            attempt=attempt,
            participant=self.participant.name,
            command=command,
            payload=payload,
            forward_key=forward_key,
            headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        )


class TransportHarness(ABC):
    """A transport under test: its dispatcher and how a participant becomes reachable."""

    dispatcher: Dispatcher

    @abstractmethod
    async def register(self, participant: Participant) -> None:
        """Make ``participant`` reachable through ``dispatcher``."""

    async def call(self, command: Command, timeout: float = 30.0) -> Reply:
        """Send ``command``, return the reply (see the module docstring)."""
        if not self.dispatcher.parks:
            return await self.dispatcher.call(command, timeout)
        return await self._publish_and_wait(command, timeout)

    _waiters: dict[str, list[asyncio.Future[Reply]]]

    async def _publish_and_wait(self, command: Command, timeout: float) -> Reply:
        # One waiter per publish, oldest first: concurrent duplicates of one command each
        # get a reply of their own.
        if not hasattr(self, "_waiters"):
            self._waiters = {}

            async def on_reply(reply: Reply) -> None:
                waiters = self._waiters.get(reply.message_id)
                while waiters:
                    waiter = waiters.pop(0)
                    if not waiter.done():
                        waiter.set_result(reply)
                        return

            self.dispatcher.on_reply(on_reply)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command.message_id, []).append(waiter)
        await self.dispatcher.publish([command.to_outbox(0.0)])
        async with asyncio.timeout(timeout):
            return await waiter


class TransportContract:
    """Subclass it and provide the ``transport`` fixture, and a ``participant_database``
    fixture (here or in a conftest: a class attribute would hide a conftest's)."""

    @pytest.fixture
    async def transport(self) -> AsyncIterator[TransportHarness]:
        raise NotImplementedError("provide a transport fixture yielding a TransportHarness")
        return  # pragma: no cover

    @pytest.fixture
    async def bank(
        self, participant_database: str, transport: TransportHarness
    ) -> AsyncIterator[Bank]:
        bank = Bank(bank_participant(participant_database))
        await asyncio.to_thread(bank.setup)
        await transport.register(bank.participant)
        try:
            yield bank
        finally:
            await bank.participant.close()

    async def test_call_returns_the_reply(self, transport: TransportHarness, bank: Bank) -> None:
        command = bank.command("debit", {"account": "alice", "amount": 30})
        reply = await transport.call(command)
        assert reply.ok, reply.error
        assert reply.output == {"account": "alice", "balance": 70}
        assert (reply.message_id, reply.saga_id, reply.step) == (
            command.message_id,
            command.saga_id,
            command.step,
        )
        assert (reply.phase, reply.participant) == (Phase.FORWARD, "bank")
        assert bank.balance() == 70
        assert bank.effects(command.message_id) == 1

    async def test_business_failure_is_a_failed_reply_recorded_for_redelivery(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        command = bank.command("debit", {"account": "alice", "amount": 500})
        reply = await transport.call(command)
        assert not reply.ok
        assert reply.error == "insufficient funds"
        assert bank.balance() == 100
        assert bank.effects() == 0
        # Enough money now, but the message was answered: a redelivery gets the same failure.
        await asyncio.to_thread(bank.set_balance, "alice", 1000)
        again = await transport.call(bank.command("debit", command.payload, attempt=2))
        assert (again.ok, again.error) == (False, "insufficient funds")
        assert bank.balance() == 1000
        assert bank.effects() == 0

    async def test_declared_business_error_fails_with_its_message(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        reply = await transport.call(bank.command("debit", {"account": "carol", "amount": 1}))
        assert (reply.ok, reply.error) == (False, "no account 'carol'")

    async def test_unknown_command_is_a_failed_reply(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        reply = await transport.call(bank.command("launch", {"account": "alice", "amount": 1}))
        assert not reply.ok
        assert reply.error is not None
        assert "launch" in reply.error

    async def test_redelivery_gets_the_same_reply_and_applies_once(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        first = await transport.call(bank.command("debit", {"account": "alice", "amount": 30}))
        again = await transport.call(
            bank.command("debit", {"account": "alice", "amount": 30}, attempt=2)
        )
        assert first.ok
        assert again.ok
        assert again.output == first.output == {"account": "alice", "balance": 70}
        assert again.attempt == 2
        assert bank.balance() == 70
        assert bank.effects() == 1

    async def test_concurrent_duplicates_apply_once(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        command = bank.command("debit", {"account": "alice", "amount": 10})
        replies = await asyncio.gather(*(transport.call(command) for _ in range(8)))
        assert all(reply.ok for reply in replies)
        assert {reply.output["balance"] for reply in replies} == {90}
        assert bank.balance() == 90
        assert bank.effects(command.message_id) == 1

    async def test_compensation_undoes_the_forward_effect_once(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        forward = bank.command("debit", {"account": "alice", "amount": 40})
        assert (await transport.call(forward)).ok
        undo = bank.command("refund", forward.payload, forward_key=forward.message_id)
        for attempt in (1, 2):
            reply = await transport.call(
                bank.command(
                    "refund", forward.payload, forward_key=forward.message_id, attempt=attempt
                )
            )
            assert reply.ok, reply.error
        assert bank.balance() == 100
        assert bank.effects(undo.message_id) == 1

    async def test_tombstone_refuses_a_late_forward_command(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        forward_key = bank.key("charge")
        undo = bank.command("refund", {"account": "alice", "amount": 40}, forward_key=forward_key)
        reply = await transport.call(undo)
        assert reply.ok, reply.error  # nothing to undo: the compensation succeeds
        assert bank.effects() == 0  # ... without running the refund
        late = await transport.call(bank.command("debit", {"account": "alice", "amount": 40}))
        assert (late.ok, late.error) == (False, TOMBSTONE_ERROR)
        assert bank.balance() == 100
        assert bank.effects() == 0

    async def test_compensating_a_failed_forward_command_changes_nothing(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        forward = bank.command("debit", {"account": "alice", "amount": 500})
        assert not (await transport.call(forward)).ok
        undo = bank.command("refund", forward.payload, forward_key=forward.message_id)
        assert (await transport.call(undo)).ok
        assert bank.balance() == 100
        assert bank.effects() == 0

    async def test_transient_failure_then_retry_applies_once(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        bank.participant.fail_before = 1
        command = bank.command("debit", {"account": "alice", "amount": 25})
        await self.expect_transient(transport, command)
        assert bank.balance() == 100  # rolled back
        reply = await transport.call(bank.command("debit", command.payload, attempt=2))
        assert reply.ok, reply.error
        assert bank.balance() == 75
        assert bank.effects(command.message_id) == 1

    async def test_reply_lost_after_commit_then_retry_gets_the_recorded_reply(
        self, transport: TransportHarness, bank: Bank
    ) -> None:
        bank.participant.lose_replies = 1
        command = bank.command("debit", {"account": "alice", "amount": 25})
        await self.expect_transient(transport, command)
        assert bank.balance() == 75  # the effect committed before the reply was lost
        reply = await transport.call(bank.command("debit", command.payload, attempt=2))
        assert reply.ok, reply.error
        assert reply.output == {"account": "alice", "balance": 75}
        assert bank.balance() == 75
        assert bank.effects(command.message_id) == 1

    async def expect_transient(self, transport: TransportHarness, command: Command) -> None:
        """How a transient failure surfaces on this transport (override for message
        transports, where the broker redelivers instead)."""
        with pytest.raises((TransportError, TimeoutError)):
            await transport.call(command)
