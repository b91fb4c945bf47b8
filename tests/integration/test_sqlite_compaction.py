"""Compaction on SQLite (schema v7) and the journal (v11): what the file holds for a running and
a finished saga, the migrations from v6 and v10, the indexes a finished saga is no longer in,
and the packed encoding itself.

What every store promises about finished sagas is in ``sagaway.testing.CompactionContract``
(run on SQLite by tests/contract); these tests look at the file."""

from __future__ import annotations

import pickle
import random
import sqlite3
from pathlib import Path

import pytest

from batching import in_one_batch
from compiled_build import interpreted_only
from sagaway import Engine, Saga, StepContext
from sagaway.errors import CancelRefused, LeaseLost, StepFailed
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store import _sqlite_ops as ops
from sagaway.store._packed import pack, unpack
from sagaway.store._sqlite_compact import Journals, compact, journal_chunk, journal_rows
from sagaway.store._sqlite_schema import MIGRATIONS
from sagaway.store.sqlite import SQLiteStore
from sqlite_logs import log_at_version

T0 = 1_000.0


def _rows(db: Path, saga_id: str) -> tuple[int, int, bytes | None]:
    """A saga's step rows and events not packed (in the tables of a log before v11, or in its
    journal), and its packed value."""
    conn = sqlite3.connect(db)
    try:
        steps = conn.execute("SELECT count(*) FROM sagaway_steps WHERE saga_id = ?", (saga_id,))
        events = conn.execute("SELECT count(*) FROM sagaway_events WHERE saga_id = ?", (saga_id,))
        packed, journal, chunks = conn.execute(
            "SELECT packed, journal, chunks FROM sagaway_instances WHERE id = ?", (saga_id,)
        ).fetchone()
        journal_steps, journal_events = journal_rows(journal, chunks)
        return (
            steps.fetchone()[0] + len(journal_steps),
            events.fetchone()[0] + len(journal_events),
            packed,
        )
    finally:
        conn.close()


def _tables_rows(db: Path, saga_id: str) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {table} WHERE saga_id = ?", (saga_id,)).fetchone()[
                0
            ]
            for table in ("sagaway_steps", "sagaway_events")
        )
    finally:
        conn.close()


def _checkout() -> Saga:
    saga = Saga("checkout", version=1)

    @saga.step()
    async def reserve(ctx: StepContext, order: dict[str, bool]) -> int:
        return 1

    @reserve.compensation
    async def release(ctx: StepContext, order: dict[str, bool], reserved: int | None) -> None:
        return None

    @saga.step()
    async def charge(ctx: StepContext, order: dict[str, bool]) -> str:
        if order["fail"]:
            raise StepFailed("declined")
        return "paid"

    return saga


async def test_a_finished_saga_is_one_row_and_a_running_one_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    saga = _checkout()
    async with Engine(f"sqlite:///{db}", sagas=[saga]) as engine:
        ok = await engine.start(saga, {"fail": False})
        undone = await engine.start(saga, {"fail": True})
        for saga_id in (ok, undone):
            await engine.wait(saga_id, timeout=30)
        records = {i: await engine.store.get(i) for i in (ok, undone)}
        await engine.store.create(
            NewSaga(id="run", name="other", version=1, input={}, at=T0, owner="x")
        )
        await engine.store.commit(
            "run", "x", Change(events=[Event(T0 + 1, EventType.SAGA_STARTED)]), T0 + 1
        )
    assert records[ok].status is SagaStatus.SUCCEEDED
    assert records[undone].status is SagaStatus.COMPENSATED
    for saga_id in (ok, undone):
        steps, events, packed = _rows(db, saga_id)
        assert (steps, events) == (0, 0)
        assert packed is not None
    assert _rows(db, "run") == (0, 1, None)
    assert _tables_rows(db, "run") == (0, 0)  # in the journal: no table is written since v11
    conn = sqlite3.connect(db)
    texts = {t for (t,) in conn.execute("SELECT text FROM sagaway_texts")}
    conn.close()
    assert {"reserve", "charge"} <= texts
    async with SQLiteStore(f"sqlite:///{db}") as store:  # another process reads them back
        for saga_id, record in records.items():
            again = await store.get(saga_id)
            assert (again.steps, again.history) == (record.steps, record.history)


async def test_a_version_6_log_keeps_its_finished_sagas_as_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = log_at_version(db, 6)
    old.execute(
        "INSERT INTO sagaway_instances (id, name, version, status, input, error, created_at, "
        "updated_at) VALUES ('f', 's', 1, 'FAILED', '{}', 'boom', ?, ?)",
        (T0, T0 + 2),
    )
    old.execute(
        "INSERT INTO sagaway_steps VALUES "
        "('f', 'a', 'forward', 'FAILED', 2, NULL, 'boom', 0, ?, ?)",
        (T0, T0 + 2),
    )
    old.executemany(
        "INSERT INTO sagaway_events (saga_id, at, type, step, attempt, detail) "
        "VALUES ('f', ?, ?, ?, ?, ?)",
        [(T0, "saga_started", None, None, None), (T0 + 2, "saga_failed", None, None, "boom")],
    )
    old.commit()
    old.close()
    async with SQLiteStore(f"sqlite:///{db}") as store:
        before = await store.get("f")
        assert [e.type for e in before.history] == [EventType.SAGA_STARTED, EventType.SAGA_FAILED]
        assert _rows(db, "f") == (1, 2, None)  # the migration rewrote nothing
        # An operator's retry takes it on; when it finishes again it is compacted, whole.
        taken = await store.acquire(
            "f", "op", now=T0 + 3, lease_seconds=9, statuses=[SagaStatus.FAILED]
        )
        assert taken is not None
        assert taken.steps == before.steps
        end = Event(T0 + 4, EventType.SAGA_COMPENSATED)
        change = Change(status=SagaStatus.COMPENSATED, events=[end], release_lease=True)
        await store.commit("f", "op", change, T0 + 4)
        after = await store.get("f")
    assert after.history == [*before.history, end]
    assert after.steps == before.steps
    assert _rows(db, "f")[:2] == (0, 0)


async def test_a_version_10_running_saga_continues_after_its_rows(tmp_path: Path) -> None:
    # Written before the journal: its step rows and events are in the tables. Its later writes
    # go to the journal; it reads back in order, and finishing packs both forms.
    db = tmp_path / "v10.db"
    old = log_at_version(db, 10)
    old.execute(
        "INSERT INTO sagaway_instances (id, name, version, status, input, owner, "
        "lease_expires_at, created_at, updated_at) VALUES ('r', 's', 1, 'RUNNING', '{}', 'e1', "
        "?, ?, ?)",
        (T0 + 99, T0, T0 + 1),
    )
    old.execute(
        "INSERT INTO sagaway_steps VALUES ('r', 'pay', 'forward', 'RUNNING', 1, NULL, NULL, 0, "
        "?, NULL)",
        (T0 + 1,),
    )
    old.executemany(
        "INSERT INTO sagaway_events (saga_id, at, type, step, attempt, detail) "
        "VALUES ('r', ?, ?, ?, ?, ?)",
        [(T0, "saga_started", None, None, None), (T0 + 1, "step_started", "pay", 1, "e1")],
    )
    old.commit()
    old.close()
    paid = StepRecord("pay", Phase.FORWARD, StepStatus.SUCCEEDED, 1, 5, None, False, T0 + 1, T0 + 2)
    ship = StepRecord("ship", Phase.FORWARD, StepStatus.RUNNING, 1, None, None, False, T0 + 2)
    async with SQLiteStore(f"sqlite:///{db}") as store:
        before = await store.get("r")
        assert await store.peek("r") == before.copy(history=False)
        later = [Event(T0 + 2, EventType.STEP_SUCCEEDED, "pay", None, 1)]
        await store.commit("r", "e1", Change(steps=[paid, ship], events=later), T0 + 2)
        running = await store.get("r")
        assert _tables_rows(db, "r") == (1, 2)  # the old rows stay until it finishes
        assert running.history == [*before.history, *later]
        assert list(running.steps.values()) == [paid, ship]
        peeked = await store.peek("r")  # one statement: the table's rows, then the journal's
        assert peeked == running.copy(history=False)
        assert peeked is not None
        assert list(peeked.steps.values()) == [paid, ship]
        end = Event(T0 + 3, EventType.SAGA_SUCCEEDED)
        change = Change(status=SagaStatus.SUCCEEDED, events=[end], release_lease=True)
        await store.commit("r", "e1", change, T0 + 3)
        after = await store.get("r")
    assert after.history == [*running.history, end]
    assert after.steps == running.steps
    assert _rows(db, "r")[:2] == (0, 0)


async def test_a_version_11_running_saga_continues_after_its_json_journal(
    tmp_path: Path,
) -> None:
    # A v11 store wrote its journal as JSON text (times as 2**-22 s ticks) in ``journal``;
    # v12 appends pickled chunks to ``chunks``: it reads back in order, and finishing packs
    # both and clears both.
    db = tmp_path / "v11.db"
    old = log_at_version(db, 11)
    tick = int(T0 * 4194304)
    journal = (
        f',[[["pay","forward","RUNNING",1,null,null,0,{tick + 4194304},null]],'
        f'[[{tick},"saga_started",null,null,null,null],'
        f'[{tick + 4194304},"step_started","pay",null,1,"e1"]]]'
    )
    old.execute(
        "INSERT INTO sagaway_instances (id, name, version, status, input, owner, "
        "lease_expires_at, created_at, updated_at, journal) VALUES ('r', 's', 1, 'RUNNING', "
        "'{}', 'e1', ?, ?, ?, ?)",
        (T0 + 99, T0, T0 + 1, journal),
    )
    old.commit()
    old.close()
    paid = StepRecord("pay", Phase.FORWARD, StepStatus.SUCCEEDED, 1, 5, None, False, T0 + 1, T0 + 2)
    ship = StepRecord("ship", Phase.FORWARD, StepStatus.RUNNING, 1, None, None, False, T0 + 2)
    async with SQLiteStore(f"sqlite:///{db}") as store:
        before = await store.get("r")
        assert [e.type for e in before.history] == [
            EventType.SAGA_STARTED,
            EventType.STEP_STARTED,
        ]
        assert before.history[1].at == T0 + 1
        later = [Event(T0 + 2, EventType.STEP_SUCCEEDED, "pay", None, 1)]
        await store.commit("r", "e1", Change(steps=[paid, ship], events=later), T0 + 2)
        running = await store.get("r")
        assert running.history == [*before.history, *later]
        assert list(running.steps.values()) == [paid, ship]
        assert await store.peek("r") == running.copy(history=False)
        claimed = await store.claim(
            "e2", now=T0 + 200, lease_seconds=9, definitions=[("s", 1)], limit=5
        )
        assert [list(r.steps.values()) for r in claimed] == [[paid, ship]]
        end = Event(T0 + 3, EventType.SAGA_SUCCEEDED)
        change = Change(status=SagaStatus.SUCCEEDED, events=[end], release_lease=True)
        await store.commit("r", "e2", change, T0 + 3)
        after = await store.get("r")
    assert after.history[: len(running.history)] == running.history
    assert after.history[-1] == end
    assert after.steps == running.steps
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT journal, chunks FROM sagaway_instances").fetchall() == [
        (None, None)
    ]
    conn.close()


def test_a_journal_chunk_holds_plain_values_and_names_no_class() -> None:
    # A chunk is a pickle: reading one that names a class or function (which loading would
    # call) is refused, and writing keeps to plain values, an enum member as its text.
    chunk = journal_chunk(
        [("pay", Phase.FORWARD, StepStatus.RUNNING)], [(T0, EventType.SAGA_STARTED)]
    )
    steps, events = journal_rows(None, chunk)
    assert steps == [("pay", "forward", "RUNNING")]
    assert events == [(T0, "saga_started")]
    assert type(steps[0][1]) is str
    assert type(events[0][1]) is str
    with pytest.raises(TypeError):
        journal_chunk([("pay", object())], [])
    hostile = pickle.dumps(([], [(T0, print)]), 5)
    with pytest.raises(pickle.UnpicklingError):
        journal_rows(None, chunk + hostile)


async def _three_steps(store: SQLiteStore, saga_id: str, *, cancel: bool = False) -> None:
    """A saga written as the engine writes it, finishing in its last commit; with ``cancel``,
    a cancel is asked for between two of its commits (refused: its steps are under way; the
    refusal is an event in its history, written by request_cancel, not by a commit)."""
    steps = ("reserve", "pay", "ship")

    def step(i: int, status: StepStatus, done: bool) -> StepRecord:
        out = i if done else None
        return StepRecord(steps[i], Phase.FORWARD, status, 1, out, None, False, T0 + i, None)

    started = [Event(T0, EventType.SAGA_STARTED), Event(T0, EventType.STEP_STARTED, "reserve")]
    await store.create(
        NewSaga(
            id=saga_id,
            name="s",
            version=1,
            input={},
            at=T0,
            status=SagaStatus.RUNNING,
            owner="e1",
            lease_expires_at=T0 + 99,
            steps=[step(0, StepStatus.RUNNING, False)],
            events=started,
        )
    )
    for i in range(3):
        if cancel and i == 1:
            with pytest.raises(CancelRefused):
                await store.request_cancel(saga_id, Event(T0 + 1.5, EventType.CANCEL_REQUESTED), T0)
        changed = [step(i, StepStatus.SUCCEEDED, True)]
        events = [Event(T0 + i + 1, EventType.STEP_SUCCEEDED, steps[i], None, 1)]
        last = i == 2
        if not last:
            changed.append(step(i + 1, StepStatus.RUNNING, False))
            events.append(Event(T0 + i + 1, EventType.STEP_STARTED, steps[i + 1], None, 1, "e1"))
        else:
            events.append(Event(T0 + 3.25, EventType.SAGA_SUCCEEDED))
        change = Change(
            status=SagaStatus.SUCCEEDED if last else None,
            steps=changed,
            events=events,
            release_lease=last,
        )
        await store.commit(saga_id, "e1", change, T0 + i + 1)


@interpreted_only  # compiled, Journals' own calls to take/packed do not see the patched ones
async def test_compaction_packs_the_rows_it_wrote_as_it_would_decode_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store keeps the rows it wrote to a journal (Journals) and packs those instead of
    # decoding the text, in compaction ("a", whose step names are not numbered yet) or in the
    # finishing commit itself ("b", "c"): the packed values must be the very ones decoding gives.
    values = []
    for name in ("kept", "decoded"):
        if name == "decoded":
            monkeypatch.setattr(Journals, "take", lambda self, saga_id, journal: None)
            monkeypatch.setattr(Journals, "packed", lambda self, saga_id, steps, events: None)
        async with SQLiteStore(f"sqlite:///{tmp_path / name}.db") as store:
            for saga_id in ("a", "b", "c"):
                await _three_steps(store, saga_id)
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        values.append(conn.execute("SELECT id, packed FROM sagaway_instances").fetchall())
        conn.close()
    assert values[0] == values[1]
    assert all(packed is not None for _, packed in values[0])


async def test_compaction_decodes_a_journal_written_by_another_write(tmp_path: Path) -> None:
    # The refused cancel's event goes into the journal by request_cancel, not by a commit: the
    # rows the store kept are not the journal any more, and it must notice (after "first",
    # the texts are numbered and the finishing commit would pack the saga itself).
    async with SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}") as store:
        await _three_steps(store, "first")
        await _three_steps(store, "s", cancel=True)
        record = await store.get("s")
    assert record.status is SagaStatus.SUCCEEDED
    assert [e.type for e in record.history].count(EventType.CANCEL_REFUSED) == 1
    assert _rows(tmp_path / "log.db", "s")[:2] == (0, 0)


async def test_a_write_after_the_finishing_commit_in_its_batch_stays_after_it(
    tmp_path: Path,
) -> None:
    # The finishing commit's rows skip the journal (the batch's compaction packs them): an
    # unfenced write of the same saga later in the same batch must still come after them.
    db = tmp_path / "log.db"
    async with SQLiteStore(f"sqlite:///{db}") as store:
        await store.create(
            NewSaga(
                id="s", name="s", version=1, input={}, at=T0, owner="e1", status=SagaStatus.RUNNING
            )
        )
        failed = Event(T0 + 1, EventType.SAGA_FAILED, detail="boom")
        later = Event(T0 + 2, EventType.RETRY_REQUESTED, detail="operator")
        finish = Change(status=SagaStatus.FAILED, events=[failed], release_lease=True)
        results = await in_one_batch(
            store,
            store.commit("s", "e1", finish, T0 + 1),
            store.commit("s", None, Change(events=[later]), T0 + 2),
        )
        assert results == [None, None]
        record = await store.get("s")
    assert record.history[-2:] == [failed, later]
    assert _rows(db, "s")[:2] == (0, 0)  # compacted, both events in the packed value


async def test_a_finishing_commit_packs_the_saga_in_its_own_update(tmp_path: Path) -> None:
    # Once its step names and engine id are numbered (by the first saga's compaction), a saga
    # this store created and ran is finished by one statement: no compaction reading the
    # journal back and writing the row a second time.
    async with SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}") as store:
        await _three_steps(store, "first")
        finishing: list[str] = []
        real_commit = store.commit

        async def traced(saga_id: str, owner: str | None, change: Change, at: float) -> None:
            assert store._writer_conn is not None
            traced_sql = finishing if change.status is SagaStatus.SUCCEEDED else None
            store._writer_conn.set_trace_callback(None if traced_sql is None else traced_sql.append)
            try:
                await real_commit(saga_id, owner, change, at)
            finally:
                store._writer_conn.set_trace_callback(None)

        store.commit = traced  # type: ignore[method-assign]
        await _three_steps(store, "s")
        record = await store.get("s")
    statements = [s for s in finishing if "sagaway_instances" in s or "sagaway_texts" in s]
    assert len(statements) == 1, statements
    assert "packed = " in statements[0]
    assert record.status is SagaStatus.SUCCEEDED
    assert [e.type for e in record.history][-2:] == [
        EventType.STEP_SUCCEEDED,
        EventType.SAGA_SUCCEEDED,
    ]
    assert _rows(tmp_path / "log.db", "s")[:2] == (0, 0)


async def test_a_finishing_commit_that_lost_its_lease_packs_nothing(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    async with SQLiteStore(f"sqlite:///{db}") as store:
        await _three_steps(store, "first")
        journal_before: list[str] = []
        real_commit = store.commit

        async def stolen(saga_id: str, owner: str | None, change: Change, at: float) -> None:
            if change.status is SagaStatus.SUCCEEDED:  # another engine took the saga over
                conn = sqlite3.connect(db)
                with conn:
                    conn.execute(
                        "UPDATE sagaway_instances SET owner = 'e2' WHERE id = ?", (saga_id,)
                    )
                    journal_before.append(
                        conn.execute(
                            "SELECT journal FROM sagaway_instances WHERE id = ?", (saga_id,)
                        ).fetchone()[0]
                    )
                conn.close()
            await real_commit(saga_id, owner, change, at)

        store.commit = stolen  # type: ignore[method-assign]
        with pytest.raises(LeaseLost):
            await _three_steps(store, "s")
        record = await store.get("s")
    assert record.status is SagaStatus.RUNNING
    conn = sqlite3.connect(db)
    packed, journal = conn.execute(
        "SELECT packed, journal FROM sagaway_instances WHERE id = 's'"
    ).fetchone()
    conn.close()
    assert packed is None
    assert journal == journal_before[0]


def test_texts_numbered_by_a_batch_are_used_once_it_committed() -> None:
    # A number read inside a transaction that is then rolled back may be given to another text
    # by the next writer: the finishing commit packs with committed numbers only.
    journals = Journals()
    step = ("reserve", "forward", "SUCCEEDED", 1, "1", None, 0, T0, T0 + 1)
    done = (T0 + 1, "saga_succeeded", None, None, None, None)
    journals.start("s", T0, b"chunk", [], [])
    journals.fresh.update({"reserve": 1})
    assert journals.packed("s", [step], [done]) is None
    journals.fresh.clear()  # the next batch starts: that one was rolled back
    journals.settle()
    assert journals.packed("s", [step], [done]) is None
    journals.fresh.update({"reserve": 1})
    journals.settle()  # committed
    found = journals.packed("s", [step], [done])
    assert found is not None
    assert found[0] == b"chunk"
    assert unpack(T0, found[1], lambda numbers: {1: "reserve"}) == ([step], [done])


async def test_finished_sagas_are_in_no_status_index(tmp_path: Path) -> None:
    db = tmp_path / "plans.db"
    async with SQLiteStore(f"sqlite:///{db}"):
        pass
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
        "updated_at) VALUES (?, 's', 1, ?, NULL, ?, ?)",
        [(f"s{i}", s, T0 + i, T0 + i) for i, s in enumerate(["SUCCEEDED", "RUNNING", "FAILED"])],
    )
    conn.commit()
    # A partial index's entries: count through it, forced.
    n = conn.execute(
        "SELECT count(*) FROM sagaway_instances INDEXED BY sagaway_instances_open "
        "WHERE status NOT IN ('SUCCEEDED','COMPENSATED')"
    ).fetchone()[0]
    assert n == 2
    # The queries that need them still find them.
    from sagaway.store import _sqlite_admin as admin

    def plan(sql: str, params: tuple[object, ...]) -> str:
        return " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

    listing = (
        "SELECT id FROM sagaway_instances WHERE status = ? AND "
        f"{ops.NOT_DONE} ORDER BY created_at DESC, id DESC LIMIT 5"
    )
    assert "sagaway_instances_open" in plan(listing, ("FAILED",))
    items, total = admin.read_list(conn, SagaStatus.SUCCEEDED, None, 10, 0)
    assert ([r.id for r in items], total) == (["s0"], 1)
    items, total = admin.read_list(conn, SagaStatus.FAILED, None, 10, 0)
    assert ([r.id for r in items], total) == (["s2"], 1)
    conn.execute("BEGIN IMMEDIATE")
    claimed = ops.claim(conn, "e", T0 + 10, 5, [("s", 1)], 10, False)
    conn.execute("ROLLBACK")
    assert [r.id for r in claimed] == ["s1"]
    conn.close()


@pytest.mark.parametrize("seed", range(5))
def test_packing_gives_back_every_row_to_the_bit(seed: int) -> None:
    rng = random.Random(seed)
    base = rng.choice([T0, 1_795_682_717.4182477, 0.0, 2.0**31 + 0.5, 1e-300])
    times = [
        rng.choice([base, base + rng.random() * 10, base - rng.random(), rng.uniform(0, 5e9)])
        for _ in range(40)
    ]
    steps = [
        (
            f"step-{i % 4}",
            rng.choice(["forward", "compensation", "a phase of the future"]),
            rng.choice(["SUCCEEDED", "FAILED", "SKIPPED", "NEW_STATUS"]),
            rng.randrange(5),
            rng.choice([None, "0", '""', '{"a":[1,2.5,null]}']),
            rng.choice([None, "", "boom ✗"]),
            rng.randrange(2),
            rng.choice([None, times[i]]),
            rng.choice([None, times[i + 1]]),
        )
        for i in range(8)
    ]
    events = [
        (
            times[i],
            rng.choice(["saga_started", "step_started", "signal_received", "a_new_event"]),
            rng.choice([None, "step-1", "step-9"]),
            rng.choice([None, "forward", "compensation"]),
            rng.choice([None, 0, 3]),
            rng.choice([None, "", "engine-7", "detail ß"]),
        )
        for i in range(30)
    ]
    shared = {"step-1": 3, "engine-7": 12}
    value = pack(base, steps, events, shared)
    resolve = {3: "step-1", 12: "engine-7"}
    back_steps, back_events = unpack(base, value, lambda ids: {i: resolve[i] for i in ids})
    assert back_steps == steps
    assert back_events == events
    assert [repr(e[0]) for e in back_events] == [repr(e[0]) for e in events]


def _log_with_running_sagas(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)")
    for statements in MIGRATIONS:
        for statement in statements:
            conn.execute(statement)
    for saga_id in ("a", "b"):
        conn.execute(
            "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
            "updated_at) VALUES (?, 's', 1, 'SUCCEEDED', '{}', ?, ?)",
            (saga_id, T0, T0 + 3),
        )
    conn.executemany(
        ops.UPSERT_STEP,
        [
            ("a", "pay", "forward", "RUNNING", 1, None, None, 0, T0 + 1, None),
            ("a", "ship", "forward", "SUCCEEDED", 1, '"s-1"', None, 0, T0 + 0.5, T0 + 1),
            ("b", "pay", "forward", "SUCCEEDED", 1, "5", None, 0, T0 + 1, T0 + 2),
        ],
    )
    conn.executemany(
        ops.INSERT_EVENT,
        [
            ("a", T0, "saga_started", None, None, None, None),
            ("b", T0, "saga_started", None, None, None, None),
            ("a", T0 + 1, "step_started", "pay", "forward", 1, "engine-1"),
        ],
    )
    return conn


def test_rows_packed_before_being_written_pack_as_if_written(tmp_path: Path) -> None:
    # The finishing commit's rows of a batch go into the packed value without being inserted:
    # the value must be the very one that inserting them and then compacting would give.
    late_steps = [
        ("a", "pay", "forward", "SUCCEEDED", 1, "7", None, 0, T0 + 1, T0 + 2),  # upserted
        ("a", "audit", "forward", "SUCCEEDED", 1, None, None, 0, T0 + 2, T0 + 2.5),  # new
        ("b", "refund", "compensation", "COMPENSATED", 2, None, "late", 1, T0 + 2, T0 + 3),
    ]
    late_events = [
        ("a", T0 + 2, "step_succeeded", "pay", "forward", 1, None),
        ("b", T0 + 3, "saga_compensated", None, None, None, "late"),
        ("a", T0 + 3, "saga_succeeded", None, None, None, None),
    ]
    written = _log_with_running_sagas(tmp_path / "written.db")
    written.execute("BEGIN")
    written.executemany(ops.UPSERT_STEP, late_steps)
    written.executemany(ops.INSERT_EVENT, late_events)
    compact(written, ["a", "b"])
    written.execute("COMMIT")
    unwritten = _log_with_running_sagas(tmp_path / "unwritten.db")
    unwritten.execute("BEGIN")
    compact(unwritten, ["a", "b"], late_steps, late_events)
    unwritten.execute("COMMIT")
    packed = "SELECT id, packed FROM sagaway_instances ORDER BY id"
    assert unwritten.execute(packed).fetchall() == written.execute(packed).fetchall()
    for conn in (written, unwritten):
        for table in ("sagaway_steps", "sagaway_events"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        conn.close()


# A saga packed by the encoders before this one (deflated JSON, ``z``; the first binary form,
# ``b``), and a short one (plain JSON, ``j``): logs hold such values, and they must read back
# the same for ever.
_OLD_Z = bytes.fromhex(
    "7a558ecd0ac3300c835f65e42c86959fa67d9690c3a0830d4a3716f6fe731d5ad6837d906c7d2a8570edf1"
    "7c3bb8f575b9cdf3e7de9a83af284520f02028714c798097293379383ab5a96e507f5729225762fd2e8bbd"
    "8b7e269dc098b21f1139c520b11fd862ed146e693b4353bb89f0278743b6e4add5e94ad183d13ade0a989a"
    "1332b62ae73cfa5aeb0f"
)
_OLD_B = bytes.fromhex(
    "6204020973686970156e6f20616464726573730403001902828080018280800201310122048280800201cd"
    "cccccccc408f4002006c028280800382808004070110818080012d00020381808001350002012d01020300"
    "cdcccccccc448f405d010402000000000000468f407f0002020381808001c001"
)
_OLD_STEPS = [
    ("reserve", "forward", "SUCCEEDED", 1, "1", None, 0, T0 + 0.25, T0 + 0.5),
    ("ship", "forward", "FAILED", 2, None, "no address", 0, T0 + 0.5, 1000.1),
    ("reserve", "compensation", "COMPENSATED", 1, None, None, 1, T0 + 0.75, T0 + 1),
]
_OLD_EVENTS = [
    (T0, "saga_started", None, None, None, None),
    (T0 + 0.25, "step_started", "reserve", None, 1, "engine-1"),
    (T0 + 0.5, "step_succeeded", "reserve", None, 1, None),
    (T0 + 0.5, "step_started", "ship", None, 1, "engine-1"),
    (T0 + 0.6, "step_failed", "ship", None, 2, "no address"),
    (T0 + 0.75, "compensation_started", "reserve", "compensation", 1, "engine-1"),
    (T0 + 1, "saga_compensated", None, None, None, None),
]


def test_values_packed_by_earlier_encoders_still_read() -> None:
    shared = {1: "reserve", 2: "engine-1"}
    for old in (_OLD_Z, _OLD_B):
        assert unpack(T0, old, lambda ids: {i: shared[i] for i in ids}) == (
            _OLD_STEPS,
            _OLD_EVENTS,
        )
    assert unpack(T0, b"j[[],[],[[0,1]]]") == ([], [(T0, "saga_started", None, None, None, None)])
    # The same saga packed now: binary, and smaller than the deflated JSON.
    value = pack(T0, _OLD_STEPS, _OLD_EVENTS, {"reserve": 1, "engine-1": 2})
    assert value[:1] == b"t"
    assert len(value) < len(_OLD_B) < len(_OLD_Z)
    assert unpack(T0, value, lambda ids: {i: shared[i] for i in ids}) == (
        _OLD_STEPS,
        _OLD_EVENTS,
    )


def test_packing_writes_long_outputs_byte_for_byte_as_before() -> None:
    # pack joins a long output (a model's JSON) to the value as the bytes it is, a short one is
    # copied in: the value is the one the byte-by-byte packing wrote (taken from it), readers
    # of existing logs and of new ones read the same bytes.
    out = '{"order_id":"ord_1","lines":[{"product_id":"p","quantity":2}],"total_cents":4000}'
    steps = [
        ("validate", "forward", "SUCCEEDED", 1, out, None, 0, T0 + 1, T0 + 2),
        ("pay", "forward", "SUCCEEDED", 1, "7", None, 0, T0 + 2, T0 + 3),
        (
            "ship",
            "forward",
            "FAILED",
            2,
            out.replace("4000", "12") * 2,
            "no courier",
            0,
            T0 + 3,
            T0 + 4,
        ),
    ]
    events = [
        (T0 + 1, "step_started", "validate", "forward", 1, "engine-1"),
        (T0 + 4, "saga_failed", None, None, None, "no courier"),
    ]
    value = pack(T0, steps, events, {"validate": 1})
    short = out.replace("4000", "12").encode()
    assert value == (
        b"t\x05\x02\x07pay\tship\x15no courier\x11engine-1\x04"
        + b"\x82\x80\x80\x04" * 4
        + b"\x03\x00\x19\x02\x01\x02Q"
        + out.encode()
        + b"\x01\x19\x02\x02\x03\x017\x02#\x04\x03\x04\x9e\x01"
        + short * 2
        + b"\x03\x02\x00/\x00\x01\x02\x04\x03\xd8\x01\x03"
    )
    assert unpack(T0, value, lambda ids: {1: "validate"}) == (steps, events)


def test_packing_keeps_large_numbers_long_texts_and_many_texts() -> None:
    # Past every one-byte form: text indexes and shared numbers over 127, attempts over 63 or
    # negative, texts and outputs longer than 127 bytes, ticks of days.
    steps = [
        (f"s{i}", "forward", "FAILED", a, "x" * 300, f"error {i}", 0, T0 + i, T0 + 86_400 * i)
        for i, a in zip(range(150), [0, 63, 64, 1_000_000, -3] * 30, strict=True)
    ]
    events = [
        (T0 + 86_400 * i, "step_failed", f"s{i}", "compensation", -i, "d" * i)
        for i in range(1, 150)
    ]
    shared = {f"s{i}": 1_000 + i for i in range(150)}
    value = pack(T0, steps, events, shared)
    back = {n: t for t, n in shared.items()}
    assert unpack(T0, value, lambda ids: {i: back[i] for i in ids}) == (steps, events)


def test_packing_gives_back_any_rows_to_the_bit() -> None:
    # Any rows a store could hold: times anywhere (near the base, far from it, subnormal, huge,
    # infinite), shared or written-out texts, known and unknown enum values, any attempts.
    import math

    from hypothesis import given, settings
    from hypothesis import strategies as st

    # -0.0 is left out: the times section keeps equal times once, and -0.0 == 0.0.
    times = st.floats(allow_nan=False).filter(lambda t: t != 0 or math.copysign(1, t) > 0)
    near = st.tuples(times, st.integers(-(2**40), 2**40)).map(lambda p: p[0] + p[1] / 2**22)
    at = times | near
    texts = st.sampled_from(["reserve", "pay", "engine-1", "", "ß✗"]) | st.text(max_size=140)
    maybe = st.none() | texts
    numbers = st.none() | st.integers(-(2**63), 2**63)
    step = st.tuples(
        texts,
        st.sampled_from(["forward", "compensation"]) | texts,
        st.sampled_from(["SUCCEEDED", "FAILED", "COMPENSATED"]) | texts,
        st.integers(-(2**63), 2**63),
        maybe,
        maybe,
        st.sampled_from([0, 1]),
        st.none() | at,
        st.none() | at,
    )
    event = st.tuples(
        at,
        st.sampled_from(["saga_started", "step_started", "signal_received"]) | texts,
        maybe,
        st.none() | st.sampled_from(["forward", "compensation"]) | texts,
        numbers,
        maybe,
    )

    @settings(max_examples=300, deadline=None)
    @given(
        at,
        st.lists(step, max_size=6),
        st.lists(event, max_size=12),
        st.dictionaries(texts, st.integers(0, 2**40), max_size=4),
        st.booleans(),
    )
    def check(
        base: float,
        steps: list[tuple[object, ...]],
        events: list[tuple[object, ...]],
        shared: dict[str, int],
        as_lists: bool,
    ) -> None:
        back = {n: t for t, n in shared.items()}
        if len(back) < len(shared):  # two texts with one number: not what a store holds
            return
        # Rows as a v11 journal gives them (lists) pack the same.
        rows = ([list(s) for s in steps], [list(e) for e in events]) if as_lists else None
        value = pack(base, steps, events, shared)
        assert rows is None or pack(base, *rows, shared) == value
        assert value[:1] == b"t"
        got_steps, got_events = unpack(base, value, lambda ids: {i: back[i] for i in ids})
        assert got_steps == steps
        assert got_events == events
        bits = [repr(t) for s in steps for t in s[7:]] + [repr(e[0]) for e in events]
        got_bits = [repr(t) for s in got_steps for t in s[7:]]
        assert got_bits + [repr(e[0]) for e in got_events] == bits

    check()
