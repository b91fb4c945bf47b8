"""The participant library itself, on real SQLite and PostgreSQL databases: concurrent
duplicate deliveries apply once, handler declarations are checked, bad payloads fail."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from sagaway.errors import DefinitionError, StepFailed
from sagaway.participant import Participant, UnknownCommand, create_inbox_async
from sagaway.participant.inbox import open_async_engine
from sagaway.state import Phase
from sagaway.transport.base import Command
from servers import POSTGRES_URL, fresh_pg_schema, pg_schema_url


class Hold:
    """Holds a handler inside its transaction until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.runs = 0

    def participant(self, url: str) -> Participant:
        participant = Participant("held", url)

        @participant.handler("work")
        def work(conn: Connection, payload: dict[str, Any]) -> dict[str, int]:
            self.runs += 1
            self.entered.set()
            assert self.release.wait(30), "the test never released the handler"
            return {"runs": self.runs}

        return participant


def command(
    message_id: str = "s1:work:forward", name: str = "work", payload: Any = None
) -> Command:
    return Command(
        message_id=message_id,
        saga_id="s1",
        saga_name="test",
        step="work",
        phase=Phase.FORWARD,
        attempt=1,
        participant="held",
        command=name,
        payload={} if payload is None else payload,
    )


async def _wait_for_lock_waiter(url: str, schema: str) -> None:
    """Until a PostgreSQL backend waits on a lock: the duplicate blocks on the claimed row. Only
    a backend holding a lock on this test's inbox table counts: the same test may run in
    another process on the same server."""
    probe = Participant("probe", url)
    try:
        for _ in range(3000):
            with probe.sync_engine.connect() as conn:
                waiting = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock'"
                        " AND a.query LIKE '%sagaway_inbox%' AND EXISTS (SELECT 1 FROM pg_locks l"
                        " WHERE l.pid = a.pid AND l.relation = to_regclass(:inbox))"
                    ),
                    {"inbox": f'"{schema}".sagaway_inbox'},
                ).scalar_one()
            if waiting:
                return
            await asyncio.sleep(0.01)  # polling an observable condition, not timing
        raise AssertionError("the duplicate delivery never blocked on the inbox row")
    finally:
        await probe.close()


async def test_concurrent_duplicates_apply_once_on_postgresql() -> None:
    async with fresh_pg_schema("inbox") as schema:
        url = pg_schema_url(schema, POSTGRES_URL)
        hold = Hold()
        # Two participants: two processes serving the same database.
        first, second = hold.participant(url), hold.participant(url)
        first.create_inbox()
        try:
            one = asyncio.create_task(first.handle(command()))
            await asyncio.to_thread(hold.entered.wait, 30)
            two = asyncio.create_task(second.handle(command()))
            await _wait_for_lock_waiter(url, schema)
            hold.release.set()
            replies = await asyncio.gather(one, two)
        finally:
            hold.release.set()
            await first.close()
            await second.close()
        assert hold.runs == 1
        assert [reply.ok for reply in replies] == [True, True]
        assert [reply.output for reply in replies] == [{"runs": 1}, {"runs": 1}]


async def test_concurrent_duplicates_apply_once_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'held.db'}"
    hold = Hold()
    first, second = hold.participant(url), hold.participant(url)
    first.create_inbox()
    begun = threading.Event()

    @event.listens_for(second.sync_engine, "begin")
    def _begun(conn: Connection) -> None:  # after BEGIN IMMEDIATE: the lock is ours
        begun.set()

    try:
        one = asyncio.create_task(first.handle(command()))
        await asyncio.to_thread(hold.entered.wait, 30)
        two = asyncio.create_task(second.handle(command()))
        # The second delivery cannot begin while the first holds the write lock.
        assert not await asyncio.to_thread(begun.wait, 0.2)
        hold.release.set()
        replies = await asyncio.gather(one, two)
    finally:
        hold.release.set()
        await first.close()
        await second.close()
    assert begun.is_set()
    assert hold.runs == 1
    assert [reply.output for reply in replies] == [{"runs": 1}, {"runs": 1}]


class Order(BaseModel):
    sku: str
    quantity: int


async def test_a_payload_that_does_not_fit_fails_with_a_message(tmp_path: Path) -> None:
    shop = Participant("shop", f"sqlite:///{tmp_path / 'shop.db'}")
    shop.create_inbox()

    @shop.handler("order")
    def order(conn: Connection, payload: Order) -> Order:
        return payload

    try:
        reply = await shop.handle(command(name="order", payload={"sku": "a"}))
        assert not reply.ok
        assert reply.error is not None
        assert "quantity" in reply.error
        good = await shop.handle(
            command("s1:work:other", name="order", payload={"sku": "a", "quantity": 2})
        )
        assert (good.ok, good.output) == (True, {"sku": "a", "quantity": 2})
        with pytest.raises(UnknownCommand, match="ship"):
            await shop.handle(command("s1:x", name="ship"))
    finally:
        await shop.close()


def test_handler_declarations_are_checked() -> None:
    participant = Participant("p", "sqlite://")

    with pytest.raises(DefinitionError, match="AsyncEngine"):

        @Participant("q", participant.sync_engine).handler("a")
        async def run_async(conn: AsyncConnection, payload: Any) -> None:
            pass

    with pytest.raises(DefinitionError, match="parameters"):

        @participant.handler("b")
        def one_param(conn: Connection) -> None:
            pass

    @participant.handler("c")
    def fine(conn: Connection, payload: Any) -> None:
        pass

    with pytest.raises(DefinitionError, match="already"):

        @participant.handler("c")
        def again(conn: Connection, payload: Any) -> None:
            pass

    with pytest.raises(DefinitionError, match="itself"):

        @participant.handler("d", compensates="d")
        def itself(conn: Connection, payload: Any) -> None:
            pass


_notes = Table(
    "notes", MetaData(), Column("n", Integer, primary_key=True), Column("text", String(100))
)


class Note(BaseModel):
    text: str


async def test_async_handlers_share_the_inbox_transaction(participant_database: str) -> None:
    notes = Participant("notes", participant_database)
    notes.create_inbox()
    _notes.create(notes.sync_engine)

    @notes.handler("write")
    async def write(conn: AsyncConnection, payload: Note) -> dict[str, int]:
        if payload.text == "no":
            raise StepFailed("refused")
        await conn.execute(insert(_notes).values(text=payload.text))
        count = (await conn.execute(select(func.count()).select_from(_notes))).scalar_one()
        return {"count": count}

    def count(conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(_notes)).scalar_one())

    try:
        first = await notes.handle(command("k1", "write", {"text": "hello"}))
        again = await notes.handle(command("k1", "write", {"text": "hello"}))
        assert (first.ok, first.output) == (True, {"count": 1})
        assert again.output == first.output
        refused = await notes.handle(command("k2", "write", {"text": "no"}))
        assert (refused.ok, refused.error) == (False, "refused")
        assert await notes.run(count) == 1
    finally:
        await notes.close()


async def test_a_participant_on_an_async_engine(participant_database: str) -> None:
    """A service hands its own ``AsyncEngine`` (aiosqlite, asyncpg): sync handlers still run
    in one transaction with the inbox (on SQLite through a sync engine on the same file)."""
    engine = open_async_engine(participant_database)
    if "postgresql" in participant_database:
        setup = Participant("setup", participant_database)
        setup.create_inbox()  # creates the schema too
        await setup.close()
        await create_inbox_async(engine)  # idempotent
    notes = Participant("notes", engine)
    if "sqlite" in participant_database:
        notes.create_inbox()  # through its sync twin on the same file
    await notes.run(lambda conn: _notes.create(conn, checkfirst=True))

    @notes.handler("write")
    def write(conn: Connection, payload: Note) -> dict[str, int]:
        if payload.text == "no":
            raise StepFailed("refused")
        conn.execute(insert(_notes).values(text=payload.text))
        return {"count": conn.execute(select(func.count()).select_from(_notes)).scalar_one()}

    try:
        replies = [await notes.handle(command("k1", "write", {"text": "hi"})) for _ in range(2)]
        assert [r.output for r in replies] == [{"count": 1}, {"count": 1}]
        refused = await notes.handle(command("k2", "write", {"text": "no"}))
        assert (refused.ok, refused.error) == (False, "refused")
    finally:
        await notes.close()
        await engine.dispose()


async def test_a_compensation_racing_its_running_forward_command_undoes_it() -> None:
    """PostgreSQL, two service processes: the forward command is inside its transaction when
    its compensation arrives. The compensation's tombstone insert waits on the forward's inbox
    row; once the forward commits, the compensation sees it ran and undoes it (no tombstone,
    no lost effect)."""
    async with fresh_pg_schema("race") as schema:
        url = pg_schema_url(schema, POSTGRES_URL)
        hold = threading.Event()
        entered = threading.Event()
        effects: list[str] = []

        def make() -> Participant:
            participant = Participant("held", url)

            @participant.handler("work")
            def work(conn: Connection, payload: Any) -> dict[str, str]:
                entered.set()
                assert hold.wait(30), "the test never released the forward command"
                effects.append("work")
                return {"done": "yes"}

            @participant.handler("undo", compensates="work")
            def undo(conn: Connection, payload: Any) -> None:
                effects.append("undo")

            return participant

        first, second = make(), make()
        first.create_inbox()
        forward = command("s1:work:forward")
        compensation = Command(
            **{
                **forward.to_json(),
                "phase": Phase.COMPENSATION,
                "message_id": "s1:work:compensation",
                "command": "undo",
                "forward_key": forward.message_id,
            }
        )
        try:
            running = asyncio.create_task(first.handle(forward))
            await asyncio.to_thread(entered.wait, 30)
            undoing = asyncio.create_task(second.handle(compensation))
            await _wait_for_lock_waiter(url, schema)
            hold.set()
            done, undone = await asyncio.gather(running, undoing)
            late = await first.handle(forward)  # a retry of the forward: the recorded reply
        finally:
            hold.set()
            await first.close()
            await second.close()
        assert (done.ok, done.output) == (True, {"done": "yes"})
        assert undone.ok
        assert late.output == {"done": "yes"}
        assert effects == ["work", "undo"]
