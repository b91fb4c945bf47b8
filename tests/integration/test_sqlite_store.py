"""What only the SQLite store has to prove: files, schema versions, processes, group commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from batching import in_one_batch
from compiled_build import interpreted_only
from sagaway import Engine, Saga, StepContext
from sagaway.errors import (
    EffectFailed,
    EffectRefused,
    InvalidTransition,
    LeaseLost,
    SagaNotFound,
    SagawayError,
    StepFailed,
    StoreError,
    UnstorableValue,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    Park,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store import open_store
from sagaway.store._sqlite_compact import journal_rows
from sagaway.store._sqlite_schema import PAGE_SIZE, SCHEMA_VERSION
from sagaway.store.sqlite import SQLiteStore, parse_url

T0 = 1_000.0
RUNNING = StepStatus.RUNNING


def new(
    saga_id: str, *, owner: str | None = None, status: SagaStatus = SagaStatus.PENDING
) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name="s",
        version=1,
        input={"id": saga_id},
        at=T0,
        status=status,
        owner=owner,
        lease_expires_at=None if owner is None else T0 + 60,
        events=[Event(at=T0, type=EventType.SAGA_CREATED)],
    )


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shop.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(url_of(db)) as store:
        yield store


# -- URLs ---------------------------------------------------------------------------------------


def test_parse_url() -> None:
    assert parse_url("sqlite:///sagas.db") == ("sagas.db", True, 10_000)
    assert parse_url("sqlite:////var/lib/sagas.db") == ("/var/lib/sagas.db", True, 10_000)
    assert parse_url("sqlite:///a.db?durable=false&busy_timeout=50") == ("a.db", False, 50)
    assert parse_url("sqlite:///a.db?durable=true")[1] is True
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///a.db?nope=1"):
        with pytest.raises(SagawayError):
            parse_url(bad)


async def test_relative_path_and_open_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///relative.db")
    assert isinstance(store, SQLiteStore)
    async with store:
        await store.create(new("a"))
    assert (tmp_path / "relative.db").exists()


async def test_pragmas(db: Path) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, int]:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        return mode, sync, busy

    async with SQLiteStore(url_of(db)) as store:
        assert await store.run_in_transaction(pragmas) == ("wal", 2, 10_000)  # 2 = FULL
    async with SQLiteStore(url_of(db, "?durable=false&busy_timeout=250")) as store:
        assert await store.run_in_transaction(pragmas) == ("wal", 1, 250)  # 1 = NORMAL


def _page_size(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


async def test_a_new_log_file_gets_larger_pages_and_an_existing_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "fresh.db"
    async with SQLiteStore(url_of(fresh)) as store:
        await store.create(new("a"))
    assert _page_size(fresh) == PAGE_SIZE == 8192
    # A file that has pages already (an application's, or a log created before): as it was.
    shared = tmp_path / "shared.db"
    app = sqlite3.connect(shared)
    app.execute("PRAGMA page_size = 4096")
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app.commit()
    app.close()
    for n in range(2):  # reopened too: the store never rewrites a file to change its pages
        async with SQLiteStore(url_of(shared)) as store:
            await store.create(new(f"s{n}"))
            assert (await store.get("s0")).input == {"id": "s0"}
        assert _page_size(shared) == 4096


# -- files and schema ---------------------------------------------------------------------------


async def test_data_survives_close_and_reopen(db: Path) -> None:
    async with SQLiteStore(url_of(db)) as store:
        await store.create(new("a", owner="e1", status=SagaStatus.RUNNING))
        step = StepRecord("pay", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output={"n": [1, "é"]})
        await store.commit("a", "e1", Change(steps=[step]), T0 + 1)
    async with SQLiteStore(url_of(db)) as store:
        record = await store.get("a")
        assert record.output("pay") == {"n": [1, "é"]}
        assert (record.owner, record.updated_at) == ("e1", T0 + 1)


async def test_schema_is_versioned_and_shares_the_file(db: Path) -> None:
    app = sqlite3.connect(db)
    app.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")  # the application's own table
    app.commit()
    async with SQLiteStore(url_of(db)) as store:
        await store.create(new("a"))
    async with SQLiteStore(url_of(db)) as store:  # reopening migrates nothing, keeps data
        assert (await store.get("a")).input == {"id": "a"}
    tables = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {
        "orders",
        "sagaway_schema",
        "sagaway_instances",
        "sagaway_steps",
        "sagaway_events",
        "sagaway_outbox",
        "sagaway_texts",
    }
    versions = [r[0] for r in app.execute("SELECT version FROM sagaway_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    app.execute("INSERT INTO sagaway_schema (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    app.commit()
    app.close()
    with pytest.raises(StoreError, match="newer"):
        await SQLiteStore(url_of(db)).open()


async def test_a_version_1_file_is_migrated_and_keeps_working(db: Path) -> None:
    # A saga log written before parked sagas and the outbox (schema version 1), with a saga
    # in flight: opening it adds the columns and the table, and the saga carries on.
    from sagaway.store._sqlite_schema import MIGRATIONS

    old = sqlite3.connect(db)
    old.execute("CREATE TABLE sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)")
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("INSERT INTO sagaway_schema (version) VALUES (1)")
    old.execute(
        "INSERT INTO sagaway_instances (id, name, version, status, input, owner, "
        "lease_expires_at, created_at, updated_at) VALUES "
        "('old', 's', 1, 'RUNNING', '{\"id\":\"old\"}', 'e1', ?, ?, ?)",
        (T0 + 60, T0, T0),
    )
    old.commit()
    old.close()
    async with SQLiteStore(url_of(db)) as store:
        record = await store.get("old")
        assert (record.input, record.owner, record.waiting_for, record.parked_until) == (
            {"id": "old"},
            "e1",
            None,
            None,
        )
        message = OutboxMessage("m1", "old", "inventory.reserve", {"n": 1}, T0 + 1)
        park = Change(
            steps=[StepRecord("a", Phase.FORWARD, RUNNING, 1)],
            outbox=(message,),
            park=Park("reply:inventory.reserve", T0 + 30),
        )
        await store.commit("old", "e1", park, T0 + 1)
        assert await store.outbox_pending(limit=5) == [message]
        assert [r.id for r in (await store.list_waiting()).items] == ["old"]
        claimed = await store.claim(
            "e2", now=T0 + 30, lease_seconds=5, definitions=[("s", 1)], limit=5
        )
        assert [(r.id, r.waiting_for) for r in claimed] == [("old", "reply:inventory.reserve")]
    check = sqlite3.connect(db)
    versions = [r[0] for r in check.execute("SELECT version FROM sagaway_schema")]
    check.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_close_flushes_queued_writes_and_is_idempotent(db: Path) -> None:
    store = SQLiteStore(url_of(db))
    await store.open()
    await store.open()  # idempotent
    # gather starts the creates (which queue their writes) before close runs.
    *created, _ = await asyncio.gather(
        *(store.create(new(f"s{i}")) for i in range(20)), store.close()
    )
    assert created == [(f"s{i}", True) for i in range(20)]
    await store.close()
    with pytest.raises(StoreError):
        await store.create(new("late"))
    with pytest.raises(StoreError):
        await store.load("s1")
    async with SQLiteStore(url_of(db)) as reopened:
        assert (await reopened.list_sagas()).total == 20


# -- two processes (two stores) on one file -----------------------------------------------------


async def test_two_stores_on_one_file_never_claim_the_same_saga(db: Path) -> None:
    async with SQLiteStore(url_of(db)) as one, SQLiteStore(url_of(db)) as two:
        await asyncio.gather(*(one.create(new(f"s{i:03}")) for i in range(200)))
        claims = await asyncio.gather(
            *(
                store.claim(f"{n}-{k}", now=T0, lease_seconds=30, definitions=[("s", 1)], limit=9)
                for k in range(15)
                for n, store in (("one", one), ("two", two))
            )
        )
        ids = [record.id for claimed in claims for record in claimed]
        assert len(ids) == len(set(ids)) == 200
        # Each engine's writes are fenced by the lease the other cannot see in its memory.
        victim = claims[0][0]
        with pytest.raises(LeaseLost):
            await two.commit(victim.id, "two-0", Change(status=SagaStatus.SUCCEEDED), T0)
        await two.commit(victim.id, victim.owner, Change(status=SagaStatus.RUNNING), T0)
        assert (await one.get(victim.id)).status is SagaStatus.RUNNING


# -- group commit -------------------------------------------------------------------------------


async def test_one_failing_operation_does_not_fail_its_batch(store: SQLiteStore) -> None:
    await store.create(new("mine", owner="e1", status=SagaStatus.RUNNING))
    await store.create(new("done", owner="e1", status=SagaStatus.RUNNING))
    await store.commit("done", "e1", Change(SagaStatus.SUCCEEDED, release_lease=True), T0)
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT UNIQUE)"))

    def boom(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO app VALUES ('rolled back')")
        raise ValueError("boom")

    event = Event(at=T0, type=EventType.CANCEL_REQUESTED)
    results = await in_one_batch(
        store,
        store.commit("mine", "e1", Change(events=[event]), T0 + 1),
        store.commit("mine", "intruder", Change(status=SagaStatus.FAILED), T0 + 1),
        store.commit("ghost", "e1", Change(), T0 + 1),
        store.request_cancel("done", event, T0 + 1),
        store.run_in_transaction(boom),
        store.run_in_transaction(lambda c: c.execute("INSERT INTO app VALUES ('kept')").rowcount),
        store.run_in_transaction(lambda c: c.execute("INSERT INTO nope VALUES (1)")),
        store.create(new("fresh")),
    )
    assert results[0] is None
    assert isinstance(results[1], LeaseLost)
    assert isinstance(results[2], SagaNotFound)
    assert isinstance(results[3], InvalidTransition)
    assert isinstance(results[4], ValueError)
    assert results[5] == 1
    assert isinstance(results[6], StoreError)
    assert isinstance(results[6].__cause__, sqlite3.Error)
    assert results[7] == ("fresh", True)
    mine = await store.get("mine")
    assert (mine.status, len(mine.history)) == (SagaStatus.RUNNING, 2)
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert rows == [("kept",)]


async def test_a_rows_only_function_fails_alone_without_a_savepoint(store: SQLiteStore) -> None:
    """``rows_only``: no savepoint of its own. A failure that changed no row (raised before
    any write, or a failing statement, which SQLite undoes itself) leaves the batch as is;
    the batch commits everything else once."""
    await store.create(new("a", owner="e1", status=SagaStatus.RUNNING))
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT UNIQUE)"))
    statements: list[str] = []
    assert store._writer_conn is not None
    store._writer_conn.set_trace_callback(statements.append)

    def insert(conn: sqlite3.Connection) -> int:
        return conn.execute("INSERT INTO app VALUES ('kept')").rowcount

    def refuse(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT k FROM app").fetchall()
        raise ValueError("no")

    step = StepRecord("x", Phase.FORWARD, RUNNING, 1)
    results = await in_one_batch(
        store,
        store.run_in_transaction(insert, rows_only=True),
        store.run_in_transaction(refuse, rows_only=True),
        store.run_in_transaction(insert, rows_only=True),  # the key is taken: it fails
        store.commit("a", "e1", Change(steps=[step]), T0 + 1),
    )
    store._writer_conn.set_trace_callback(None)
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], StoreError)
    assert isinstance(results[2].__cause__, sqlite3.IntegrityError)
    assert results[3] is None
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert (await store.get("a")).step("x") == step
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert rows == [("kept",)]


async def test_a_rows_only_function_failing_after_a_write_is_undone_alone(
    store: SQLiteStore,
) -> None:
    """A ``rows_only`` function that raises after changing rows: the batch is replayed with a
    savepoint per operation, so its writes are gone and the others land exactly once."""
    await store.create(new("a", owner="e1", status=SagaStatus.RUNNING))
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT)"))

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO app VALUES ('undone')")
        raise ValueError("after a write")

    step = StepRecord("x", Phase.FORWARD, RUNNING, 1)
    results = await in_one_batch(
        store,
        store.run_in_transaction(
            lambda c: c.execute("INSERT INTO app VALUES ('once')").rowcount, rows_only=True
        ),
        store.run_in_transaction(half, rows_only=True),
        store.commit("a", "e1", Change(steps=[step]), T0 + 1),
    )
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert results[2] is None
    record = await store.get("a")
    assert (record.step("x"), len(record.history)) == (step, 1)
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert rows == [("once",)]


async def test_create_with_writes_the_apps_rows_and_the_saga_as_one_operation(
    store: SQLiteStore,
) -> None:
    """``create_with``: ``prepare``'s rows and the saga in the batch, without a savepoint;
    ``prepare`` failing after a write, or the saga's key found used after it wrote, leaves
    none of its rows (the replay undoes them) and the rest of the batch lands once."""
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT)"))

    def keyed(saga_id: str, key: str) -> NewSaga:
        saga = new(saga_id)
        saga.idempotency_key = key
        return saga

    await store.create(keyed("old", "used"))
    statements: list[str] = []
    assert store._writer_conn is not None
    store._writer_conn.set_trace_callback(statements.append)

    def row(k: str) -> Callable[[sqlite3.Connection], dict[str, str]]:
        def prepare(conn: sqlite3.Connection) -> dict[str, str]:
            conn.execute("INSERT INTO app VALUES (?)", (k,))
            return {"recorded": k}

        return prepare

    results = await in_one_batch(
        store,
        store.create_with(keyed("a", "ka"), row("a")),
        store.create_with(keyed("b", "kb"), row("b")),
    )
    store._writer_conn.set_trace_callback(None)
    assert results == [("a", True), ("b", True)]
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert (await store.get("a")).input == {"recorded": "a"}

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO app VALUES ('undone')")
        raise ValueError("after a write")

    results = await in_one_batch(
        store,
        store.create_with(keyed("c", "kc"), half),
        store.create_with(keyed("d", "used"), row("undone too")),
        store.create_with(keyed("e", "ke"), row("e")),
    )
    assert isinstance(results[0], ValueError)
    assert results[1:] == [("old", False), ("e", True)]
    assert [await store.load(i) for i in ("c", "d")] == [None, None]
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert sorted(rows) == [("a",), ("b",), ("e",)]


@interpreted_only  # a StepRecord named None: a compiled StepRecord refuses it
async def test_unexpected_error_mid_operation_is_confined_to_it(store: SQLiteStore) -> None:
    """A driver error after an operation's first write: the batch is replayed with a savepoint
    per operation, so the faulty one leaves no trace and the others commit exactly once."""
    await store.create(new("a", owner="e1", status=SagaStatus.RUNNING))
    await store.create(new("b", owner="e1", status=SagaStatus.RUNNING))
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT)"))
    bad_step = StepRecord(None, Phase.FORWARD, StepStatus.RUNNING, 1)  # type: ignore[arg-type]
    ok_step = StepRecord("x", Phase.FORWARD, StepStatus.RUNNING, 1)
    results = await asyncio.gather(
        store.run_in_transaction(lambda c: c.execute("INSERT INTO app VALUES ('once')").rowcount),
        store.commit("a", "e1", Change(status=SagaStatus.FAILED, steps=[bad_step]), T0 + 5),
        store.commit("b", "e1", Change(steps=[ok_step]), T0 + 5),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], StoreError)
    assert results[2] is None
    a, b = await store.get("a"), await store.get("b")
    assert (a.status, a.updated_at, a.steps) == (SagaStatus.RUNNING, T0, {})
    assert b.step("x") == ok_step
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert rows == [("once",)]


async def test_a_failing_batch_fails_its_callers_and_the_store_goes_on(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug or a broken connection inside the group commit itself: every caller of that
    batch gets a StoreError (none waits forever), nothing of it is written, and the next
    batch is written as usual."""
    write_batch = SQLiteStore.__dict__["_write_batch"]  # the staticmethod itself

    def broken(*args: object) -> object:
        monkeypatch.setattr(SQLiteStore, "_write_batch", write_batch)  # once
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(SQLiteStore, "_write_batch", staticmethod(broken))
    results = await asyncio.gather(
        store.create(new("a")), store.create(new("b")), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) for r in results), results
    assert "disk on fire" in str(results[0])
    assert await store.load("a") is None
    assert await store.create(new("a")) == ("a", True)
    assert (await store.get("a")).status is SagaStatus.PENDING


async def test_run_in_transaction_is_durable_with_the_batch(store: SQLiteStore, db: Path) -> None:
    await store.run_in_transaction(
        lambda c: c.execute("CREATE TABLE ledger (key TEXT PRIMARY KEY, amount INTEGER)")
    )
    await store.create(new("s", owner="e1", status=SagaStatus.RUNNING))

    def charge(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO ledger VALUES ('s:pay:forward', 500)")
        return int(conn.execute("SELECT sum(amount) FROM ledger").fetchone()[0])

    total, committed = await in_one_batch(
        store,
        store.run_in_transaction(charge),
        store.commit("s", "e1", Change(steps=[StepRecord("pay", Phase.FORWARD, RUNNING, 1)]), T0),
    )
    assert (total, committed) == (500, None)
    # Committed, not merely visible to the writer: an independent connection sees both writes.
    other = sqlite3.connect(db)
    assert other.execute("SELECT amount FROM ledger").fetchall() == [(500,)]
    (chunks,) = other.execute("SELECT chunks FROM sagaway_instances WHERE id = 's'").fetchone()
    assert [row[0] for row in journal_rows(None, chunks)[0]] == ["pay"]
    other.close()
    # A function that tries to end the store's transaction is refused: it fails, loudly, and
    # alone; the batch it shared commits.
    await store.create(new("t", owner="e1", status=SagaStatus.RUNNING))
    for end in ("COMMIT", "rollback", "END", "BEGIN", "RELEASE sagaway_op"):
        step = StepRecord(end, Phase.FORWARD, RUNNING, 1)
        refused, committed = await asyncio.gather(
            store.run_in_transaction(lambda c, sql=end: c.execute(sql)),
            store.commit("t", "e1", Change(steps=[step]), T0),
            return_exceptions=True,
        )
        assert isinstance(refused, StoreError), end
        assert "owns the transaction" in str(refused)
        assert committed is None
        assert (await store.get("t")).step(end) == step
    with pytest.raises(StoreError, match="owns the transaction"):
        await store.run_in_transaction(lambda c: c.commit())
    assert (await store.get("s")).step("pay") is not None  # the store still works


async def test_batched_rows_and_user_writes_commit_together(store: SQLiteStore) -> None:
    """The fast path defers step rows and events to the batch's end and runs atomic writes
    without a savepoint: a failing atomic write replays the batch, failing only its own
    transition, and every other operation's rows land exactly once, in order."""
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT UNIQUE)"))
    for name in ("a", "b", "c"):
        await store.create(new(name, owner="e1", status=SagaStatus.RUNNING))

    def put(key: str) -> Callable[[sqlite3.Connection], object]:
        return lambda conn: conn.execute("INSERT INTO app VALUES (?)", (key,))

    first = Event(at=T0 + 1, type=EventType.STEP_STARTED, step="x")
    second = Event(at=T0 + 2, type=EventType.STEP_SUCCEEDED, step="x")
    step = StepRecord("x", Phase.FORWARD, StepStatus.SUCCEEDED, 1)
    results = await in_one_batch(
        store,
        store.commit(
            "a", "e1", Change(steps=[step], events=[first, second], effects=(put("a"),)), T0 + 2
        ),
        store.commit(
            "b", "e1", Change(status=SagaStatus.FAILED, steps=[step], effects=(put("a"),)), T0 + 2
        ),
        store.commit("c", "e1", Change(events=[first], effects=(put("c"),)), T0 + 2),
        store.create(new("d")),
    )
    assert results[0] is None
    assert isinstance(results[1], EffectFailed)
    assert results[2] is None
    assert results[3] == ("d", True)
    a, b, c, d = [await store.get(name) for name in "abcd"]
    assert a.step("x") == step
    assert [e.type for e in a.history[-2:]] == [EventType.STEP_STARTED, EventType.STEP_SUCCEEDED]
    assert (b.status, b.steps, len(b.history)) == (SagaStatus.RUNNING, {}, 1)
    assert len(c.history) == 2
    assert len(d.history) == 1
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert sorted(rows) == [("a",), ("c",)]


async def test_a_write_refused_before_its_batch_fails_its_await_not_its_call(db: Path) -> None:
    # create and commit queue their write at the call and return its future (no coroutine a
    # write): a refusal still comes out of the await, as from the port's async def, so that
    # gather(return_exceptions=True) collects it beside the writes that went through.
    store = SQLiteStore(url_of(db))
    async with store:
        unstorable = new("bad")
        unstorable.input = {"raw": b"bytes"}
        writes = [store.create(new("a")), store.create(unstorable)]
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert results[0] == ("a", True)
        assert isinstance(results[1], UnstorableValue)
        with pytest.raises(SagaNotFound):
            await store.get("bad")
    late = store.commit("a", None, Change(), T0 + 1)  # closed: refused at the await
    with pytest.raises(StoreError):
        await late


# -- the engine on SQLite -----------------------------------------------------------------------


async def test_engine_runs_a_saga_on_sqlite(db: Path) -> None:
    saga = Saga("sqlite-smoke", version=1)
    effects: list[str] = []

    @saga.step()
    async def first(ctx: StepContext, order: dict[str, int]) -> int:
        effects.append(ctx.idempotency_key)
        return order["n"] * 2

    @saga.step()
    async def second(ctx: StepContext, order: dict[str, int]) -> int:
        return int(ctx.results["first"]) + 1

    async with Engine(f"sqlite:///{db}", owner_id="e") as engine:
        saga_id = await engine.start(saga, {"n": 20}, idempotency_key="k")
        assert await engine.start(saga, {"n": 99}, idempotency_key="k") == saga_id
        record = await engine.wait(saga_id, timeout=30)
    assert record.status is SagaStatus.SUCCEEDED
    async with SQLiteStore(url_of(db)) as store:
        stored = await store.get(saga_id)
    assert (stored.status, stored.output("second"), stored.owner) == (
        SagaStatus.SUCCEEDED,
        41,
        None,
    )
    assert effects == [f"{saga_id}:first:forward"]


async def test_a_version_3_log_is_migrated_for_retention(db: Path) -> None:
    # A log written before retention (schema version 3): opening it adds the pinned column and
    # the index of prunable sagas (version 5 narrowed the claim index, version 6 undid it).
    from sagaway.store._sqlite_schema import MIGRATIONS

    old = sqlite3.connect(db)
    old.execute("CREATE TABLE sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)")
    for version in (1, 2, 3):
        for statement in MIGRATIONS[version - 1]:
            old.execute(statement)
        old.execute("INSERT INTO sagaway_schema (version) VALUES (?)", (version,))
    for saga_id, status in (("done", "SUCCEEDED"), ("run", "RUNNING"), ("undone", "COMPENSATED")):
        old.execute(
            "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
            "updated_at) VALUES (?, 's', 1, ?, NULL, ?, ?)",
            (saga_id, status, T0, T0),
        )
    old.commit()
    old.close()
    async with SQLiteStore(url_of(db)) as store:
        assert not (await store.get("done")).pinned
        assert await store.prunable(finished_before=T0 + 1, limit=10) == ["done", "undone"]
        assert (await store.set_pinned("undone", True)).pinned
        assert await store.prune(["done", "undone"], finished_before=T0 + 1) == ["done"]
        claimed = await store.claim(
            "e1", now=T0 + 1, lease_seconds=5, definitions=[("s", 1)], limit=5
        )
        assert [r.id for r in claimed] == ["run"]
    check = sqlite3.connect(db)
    versions = [r[0] for r in check.execute("SELECT version FROM sagaway_schema")]
    check.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_prune_finds_its_sagas_by_primary_key(db: Path) -> None:
    # With statistics (an application sharing the file may run ANALYZE), the planner read the
    # delete through a status index: every finished saga in the log for each batch of 200.
    from sagaway.store._sqlite_admin import PRUNE_INSTANCES

    async with SQLiteStore(url_of(db)):
        pass
    conn = sqlite3.connect(db)
    for _ in ("without statistics", "with"):
        plan = " ".join(
            r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {PRUNE_INSTANCES}", ("[]", 1.0))
        )
        assert "USING PRIMARY KEY (id=?)" in plan, plan
        conn.execute("ANALYZE")
    conn.close()


async def test_a_refusing_atomic_write_fails_its_transition_alone(store: SQLiteStore) -> None:
    """``ctx.atomic()`` writes run before their transition: one that refuses (``StepFailed``)
    before changing a row fails its transition with nothing to undo, no savepoint, the rest of
    the batch committed; one that refuses after a change is undone by the replay. Either way
    the transition is not written and the reason comes back as ``EffectRefused``."""
    for saga_id in ("a", "b", "c"):
        await store.create(new(saga_id, owner="e1", status=SagaStatus.RUNNING))
    await store.run_in_transaction(lambda c: c.execute("CREATE TABLE app (k TEXT)"))

    def refuse(conn: sqlite3.Connection) -> None:
        conn.execute("SELECT k FROM app").fetchall()
        raise StepFailed("Insufficient funds")

    def kept(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO app VALUES ('kept')")

    def half(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO app VALUES ('undone')")
        raise StepFailed("after a write")

    def changes(*effects: Any) -> Change:
        return Change(steps=[StepRecord("x", Phase.FORWARD, RUNNING, 1)], effects=effects)

    statements: list[str] = []
    assert store._writer_conn is not None
    store._writer_conn.set_trace_callback(statements.append)
    results = await in_one_batch(
        store,
        store.commit("a", "e1", changes(kept), T0 + 1),
        store.commit("b", "e1", changes(refuse), T0 + 1),
    )
    store._writer_conn.set_trace_callback(None)
    assert results[0] is None
    assert isinstance(results[1], EffectRefused)
    assert results[1].reason == "Insufficient funds"
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    results = await in_one_batch(
        store,
        store.commit("c", "e1", changes(kept, half), T0 + 2),
        store.commit("a", "e1", changes(), T0 + 2),
    )
    assert isinstance(results[0], EffectRefused)
    assert results[1] is None
    assert (await store.get("a")).step("x") is not None
    assert (await store.get("b")).step("x") is None
    assert (await store.get("c")).step("x") is None
    rows = await store.run_in_transaction(lambda c: c.execute("SELECT k FROM app").fetchall())
    assert rows == [("kept",)]
