"""The SQLite store's durable COMMITs and WAL checkpoints: on the committer thread, off the
event loop, with the same meaning (no caller resumes before its batch is durable), the WAL
bounded by checkpoints between batches, nothing lost on close."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from sagaway.state import Event, EventType, NewSaga, SagaStatus
from sagaway.store import _sqlite_commit as sqlite_commit
from sagaway.store.sqlite import SQLiteStore

T0 = 1_000.0


def new(saga_id: str) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name="s",
        version=1,
        input={"id": saga_id},
        at=T0,
        status=SagaStatus.PENDING,
        events=[Event(at=T0, type=EventType.SAGA_CREATED)],
    )


def wal_bytes(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def traced(store: SQLiteStore) -> list[tuple[str, str]]:
    """Record every statement the writer's connection runs, with the thread that runs it."""
    seen: list[tuple[str, str]] = []

    def trace(statement: str) -> None:
        seen.append((statement, threading.current_thread().name))

    await store.run_in_transaction(lambda conn: conn.set_trace_callback(trace))
    return seen


async def test_durable_commits_and_checkpoints_run_on_the_committer_thread(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    async with SQLiteStore(f"sqlite:///{db}?checkpoint_interval=0") as store:
        seen = await traced(store)
        created = await asyncio.gather(*(store.create(new(f"s{i}")) for i in range(20)))
        assert created == [(f"s{i}", True) for i in range(20)]
        # Durable once create returns: another connection sees every saga.
        other = sqlite3.connect(db)
        try:
            assert other.execute("SELECT count(*) FROM sagaway_instances").fetchone() == (20,)
        finally:
            other.close()
    loop_thread = threading.current_thread().name
    commits = {thread for statement, thread in seen if statement.startswith("COMMIT")}
    begins = {thread for statement, thread in seen if statement.startswith("BEGIN")}
    checkpoints = {thread for statement, thread in seen if "wal_checkpoint" in statement}
    assert commits
    assert all(t.startswith("sagaway-sqlite-commit") for t in commits), commits
    assert checkpoints
    assert all(t.startswith("sagaway-sqlite-commit") for t in checkpoints), checkpoints
    assert begins == {loop_thread}  # the batch itself stays on the loop


async def test_without_durability_the_commit_stays_on_the_loop(tmp_path: Path) -> None:
    """``synchronous=NORMAL`` does not fsync a WAL commit: no wait worth a thread hand-off."""
    async with SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}?durable=false") as store:
        seen = await traced(store)
        await store.create(new("a"))
    commits = {thread for statement, thread in seen if statement.startswith("COMMIT")}
    assert commits == {threading.current_thread().name}


async def test_checkpoints_between_batches_keep_the_wal_bounded(tmp_path: Path) -> None:
    """A checkpoint after each batch copies every frame, so the next batch starts the WAL
    over: 120 batches leave it as large as one batch. Without them (an interval longer than
    the test) it holds all 120."""
    sizes = {}
    for interval in ("0", "3600"):
        db = tmp_path / f"log-{interval}.db"
        async with SQLiteStore(f"sqlite:///{db}?checkpoint_interval={interval}") as store:
            for i in range(120):
                await store.create(new(f"s{i}"))  # one batch each
            sizes[interval] = wal_bytes(db)
            assert (await store.list_sagas()).total == 120
    page = 4096 + 24  # a WAL frame
    assert sizes["0"] < 30 * page, sizes
    assert sizes["3600"] > 120 * page, sizes


async def test_a_failed_checkpoint_is_logged_and_the_store_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_commit, "CHECKPOINT", "SELECT no_such_function()")
    db = tmp_path / "log.db"
    with caplog.at_level(logging.WARNING, logger="sagaway.store.sqlite"):
        async with SQLiteStore(f"sqlite:///{db}?checkpoint_interval=0") as store:
            await store.create(new("a"))
            await store.create(new("b"))
            record = await store.load("b")
            assert record is not None
            assert record.status is SagaStatus.PENDING
    assert any("WAL checkpoint failed" in r.getMessage() for r in caplog.records)
    async with SQLiteStore(f"sqlite:///{db}") as store:
        assert (await store.list_sagas()).total == 2


async def test_close_stops_the_committer_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = SQLiteStore(f"sqlite:///{db}")
    await store.open()
    # gather starts the creates (which queue their writes) before close runs.
    *created, _ = await asyncio.gather(
        *(store.create(new(f"s{i}")) for i in range(50)), store.close()
    )
    assert len(created) == 50
    assert not any(t.name.startswith("sagaway-sqlite-commit") for t in threading.enumerate())
    async with SQLiteStore(f"sqlite:///{db}") as reopened:
        assert (await reopened.list_sagas()).total == 50


def test_a_negative_checkpoint_interval_is_refused() -> None:
    with pytest.raises(Exception, match="checkpoint_interval"):
        SQLiteStore("sqlite:///x.db?checkpoint_interval=-1")
