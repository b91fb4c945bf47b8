"""The SQLite log's secondary indexes since schema version 14 (one status index, keyed by
status and whether the saga is parked): what the queries that run every recovery pass read,
that listings by status come newest first from it, and that version 12 and 13 logs migrate and
keep working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sagaway.state import Change, NewSaga, Park, Phase, SagaStatus, StepRecord, StepStatus
from sagaway.store import _sqlite_admin as admin
from sagaway.store import _sqlite_ops as ops
from sagaway.store._sqlite_schema import SCHEMA_VERSION
from sagaway.store.sqlite import SQLiteStore
from sqlite_logs import INSERT_INSTANCE, log_at_version, sagas_of_every_kind

T0 = 1_000.0
_ROWS = (
    "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
    "updated_at, waiting_for, parked_until, owner, lease_expires_at) "
    "VALUES (?, 's', 1, ?, NULL, 1.0, 1.0, ?, ?, ?, ?)"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


async def _empty_log(db: Path) -> sqlite3.Connection:
    async with SQLiteStore(url_of(db)):
        pass
    return sqlite3.connect(db, isolation_level=None)


@pytest.mark.parametrize("analyze", [False, True])
async def test_each_pass_reads_no_parked_saga_that_is_not_due(db: Path, analyze: bool) -> None:
    # Claims, lease renewal and the stranded count run every recovery pass (the count each
    # minute): with 100,000 sagas parked on a signal, an index that holds them
    # (sagaway_instances_open holds every active saga) made each pass read them all, unless
    # it seeks past them on its second key.
    conn = await _empty_log(db)
    conn.execute("BEGIN")
    conn.executemany(
        _ROWS, [(f"p{i:04d}", "RUNNING", "signal:go", 1e12, None, None) for i in range(2000)]
    )
    conn.executemany(_ROWS, [(f"m{i}", "RUNNING", None, None, "e", 5.0) for i in range(3)])
    conn.execute("COMMIT")
    if analyze:  # an application sharing the file may run it: the planner then knows sizes
        conn.execute("ANALYZE")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    conn.execute("BEGIN IMMEDIATE")
    claimed = ops.claim(conn, "e", 10.0, 5.0, [("s", 1)], 10, True)
    assert sorted(r.id for r in claimed) == ["m0", "m1", "m2"]
    assert ops.renew_leases(conn, "e", 11.0, 5.0) == []
    conn.execute("ROLLBACK")
    # Definitions this engine knows: the parked ones are skipped a definition at a time.
    assert admin.read_stranded(conn, 10.0, "e", {("s", 1)}) == {}
    conn.set_trace_callback(None)
    reads = [s for s in statements if s.startswith(("SELECT", "UPDATE"))]
    assert len(reads) >= 5
    for sql in reads:
        plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for step in plan:
            if "sagaway_instances_open" in step:
                assert "sagaway_instances_open (status=? AND <expr>=?)" in step, (sql, plan)
        assert "SCAN sagaway_instances" not in plan, (sql, plan)  # the whole table
    conn.close()


async def test_lease_renewal_reads_only_leased_sagas(db: Path) -> None:
    # Renewal runs in a group commit every recovery pass: through a status index it read every
    # parked saga (they run, with no owner), so 100,000 waiting sagas stalled every signal.
    # Since version 13 it reads the sagas not parked and the parked ones that are due (what
    # claims read each pass anyway), never the parked ones still waiting.
    conn = await _empty_log(db)
    conn.executemany(
        _ROWS,
        [
            ("parked", "RUNNING", "signal:go", 1e12, None, None),
            ("mine", "RUNNING", None, None, "e", 1.0),
            # A due parked saga this engine claimed: still parked until its run's first write.
            ("claimed-parked", "RUNNING", "signal:go", 5.0, "e", 1.0),
            # Leased before its time (acquire): only until the write that parks or releases it.
            ("acquired-parked", "RUNNING", "signal:go", 1e12, "e", 1.0),
            ("theirs", "COMPENSATING", None, None, "other", 1.0),
            ("theirs-parked", "RUNNING", "timer", 5.0, "other", 1.0),
            ("done", "SUCCEEDED", None, None, "e", 1.0),
            ("failed", "FAILED", None, None, "e", 1.0),
        ],
    )
    conn.execute("UPDATE sagaway_instances SET cancel_requested = 1 WHERE id = 'claimed-parked'")
    plan = " | ".join(
        r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {ops._RENEWED}", ("e", 10.0, "e"))
    )
    assert "sagaway_instances_open (status=? AND <expr>=?)" in plan, plan
    assert "sagaway_instances_parked (parked_until<?)" in plan, plan
    conn.execute("BEGIN IMMEDIATE")
    cancelled = ops.renew_leases(conn, "e", 10.0, 5.0)
    conn.execute("COMMIT")
    assert cancelled == ["claimed-parked"]
    leases = dict(conn.execute("SELECT id, lease_expires_at FROM sagaway_instances"))
    assert leases == {
        "parked": None,
        "mine": 15.0,
        "claimed-parked": 15.0,
        "acquired-parked": 1.0,
        "theirs": 1.0,
        "theirs-parked": 1.0,
        "done": 1.0,
        "failed": 1.0,
    }
    conn.execute("BEGIN IMMEDIATE")
    assert ops.renew_leases(conn, "nobody", 10.0, 5.0) == []
    conn.execute("COMMIT")
    conn.close()


async def _leases_and_claims_go_on(store: SQLiteStore) -> None:
    """On a migrated log of ``sagas_of_every_kind(T0)``: the running saga's lease is renewed,
    the queued saga is claimed, then the parked one once due (the others' leases live)."""
    assert await store.renew_leases("e1", now=T0 + 10, lease_seconds=30) == []
    assert (await store.get("running")).lease_expires_at == T0 + 40
    claimed = await store.claim("e2", now=T0 + 10, lease_seconds=5, definitions=[("s", 1)], limit=5)
    assert [r.id for r in claimed] == ["queued"]
    claimed = await store.claim("e2", now=T0 + 14, lease_seconds=5, definitions=[("s", 1)], limit=5)
    assert [r.id for r in claimed] == ["parked"]


async def test_a_version_12_log_is_migrated_and_keeps_working(db: Path) -> None:
    # A log with the owner index and the claim index keyed by the lease (version 12), a saga
    # in flight, one parked, one queued and one finished: opening it drops and rebuilds the
    # indexes, and claims, renewal, commits, listings and retention all go on.
    old = log_at_version(db, 12)
    old.executemany(INSERT_INSTANCE, sagas_of_every_kind(T0))
    old.commit()
    old.close()
    async with SQLiteStore(url_of(db)) as store:
        listed = [r.id for r in (await store.list_sagas()).items]
        assert listed == ["queued", "parked", "running", "done"]
        await _leases_and_claims_go_on(store)
        assert await store.renew_leases("e2", now=T0 + 14.5, lease_seconds=5) == []
        assert (await store.get("parked")).lease_expires_at == T0 + 19.5
        assert (await store.get("queued")).lease_expires_at == T0 + 19.5
        step = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output=1)
        await store.commit("running", "e1", Change(steps=[step]), T0 + 11)
        await store.commit(
            "running", "e1", Change(status=SagaStatus.SUCCEEDED, release_lease=True), T0 + 12
        )
        assert await store.prunable(finished_before=T0 + 20, limit=10) == ["done", "running"]
        assert await store.prune(["done"], finished_before=T0 + 20) == ["done"]
        page = await store.list_sagas(status=SagaStatus.RUNNING)
        assert [r.id for r in page.items] == ["parked"]
    conn = sqlite3.connect(db)
    versions = [r[0] for r in conn.execute("SELECT version FROM sagaway_schema")]
    indexes = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'sagaway_i%'"
        )
    )
    conn.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "sagaway_instances_owner" not in indexes
    assert "sagaway_instances_free" not in indexes
    assert (
        "(status, waiting_for IS NOT NULL, created_at, id, owner)"
        in (indexes["sagaway_instances_open"])
    )


def _entries(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """What sagaway_instances_open holds: (id, parked) of each entry, in its order."""
    return [
        (saga_id, parked)
        for saga_id, parked in conn.execute(
            "SELECT id, waiting_for IS NOT NULL FROM sagaway_instances "
            "INDEXED BY sagaway_instances_open WHERE status NOT IN ('SUCCEEDED','COMPENSATED') "
            "ORDER BY status, waiting_for IS NOT NULL, created_at, id"
        )
    ]


async def test_a_version_13_log_is_migrated_to_one_status_index(db: Path) -> None:
    # Version 13 had two status indexes (open: listings; free: claims, renewal, the stranded
    # count). Opening the log builds the one index from the rows, and every reader goes on.
    old = log_at_version(db, 13)
    failed = ("failed", "FAILED", None, None, None, None, T0 + 4, T0 + 4)
    old.executemany(INSERT_INSTANCE, [*sagas_of_every_kind(T0), failed])
    old.commit()
    old.close()
    async with SQLiteStore(url_of(db)) as store:
        page = await store.list_sagas(status=SagaStatus.RUNNING)
        assert ([r.id for r in page.items], page.total) == (["parked", "running"], 2)
        page = await store.list_sagas(status=SagaStatus.FAILED)
        assert ([r.id for r in page.items], page.total) == (["failed"], 1)
        assert await store.stranded(now=T0 + 10, owner="e1", known=set()) == {("s", 1): 3}
        await _leases_and_claims_go_on(store)
        await store.commit(
            "running", "e1", Change(status=SagaStatus.SUCCEEDED, release_lease=True), T0 + 15
        )
    conn = sqlite3.connect(db)
    versions = [r[0] for r in conn.execute("SELECT version FROM sagaway_schema")]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert "sagaway_instances_free" not in indexes
    # The finished sagas are not in it; the parked one after the others of its status.
    assert _entries(conn) == [("failed", 0), ("queued", 0), ("parked", 1)]
    conn.close()


async def test_a_saga_moves_in_the_status_index_as_it_parks_and_finishes(db: Path) -> None:
    async with SQLiteStore(url_of(db)) as store:
        new = NewSaga(
            "a", "s", 1, {}, T0, status=SagaStatus.RUNNING, owner="e", lease_expires_at=T0 + 60
        )
        await store.create(new)
        conn = sqlite3.connect(db)
        assert _entries(conn) == [("a", 0)]
        await store.commit("a", "e", Change(park=Park("signal:go", T0 + 5)), T0 + 1)
        assert _entries(conn) == [("a", 1)]
        await store.commit("a", None, Change(unpark=True), T0 + 2)
        assert _entries(conn) == [("a", 0)]
        await store.commit("a", None, Change(status=SagaStatus.COMPENSATING), T0 + 3)
        assert _entries(conn) == [("a", 0)]
        await store.commit("a", None, Change(status=SagaStatus.COMPENSATED), T0 + 4)
        assert _entries(conn) == []
        conn.close()


async def test_a_listing_by_status_merges_parked_and_running_sagas_newest_first(
    db: Path,
) -> None:
    conn = await _empty_log(db)
    rows = []
    for i in range(30):
        parked = i % 3 == 0
        rows.append(
            (f"r{i:02d}", "RUNNING", "signal:go" if parked else None, 1e12 if parked else None)
        )
    conn.executemany(
        "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
        "updated_at, waiting_for, parked_until) VALUES (?, 's', 1, ?, NULL, ?, ?, ?, ?)",
        [(i, s, T0 + n, T0 + n, w, u) for n, (i, s, w, u) in enumerate(rows)],
    )
    conn.execute(
        "INSERT INTO sagaway_instances (id, name, version, status, input, created_at, "
        "updated_at) VALUES ('other', 't', 1, 'RUNNING', NULL, 2000.0, 2000.0)"
    )
    newest_first = [f"r{i:02d}" for i in reversed(range(30))]
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    admin.read_list(conn, SagaStatus.RUNNING, None, 5, 0)
    conn.set_trace_callback(None)
    (page,) = [sql for sql in statements if "ORDER BY" in sql]
    plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {page}")]
    # Both ranges read in the index's order and merged: no sort of every saga of the status.
    assert (
        plan.count(
            "SEARCH sagaway_instances USING INDEX sagaway_instances_open (status=? AND <expr>=?)"
        )
        == 2
    ), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
    for limit, offset in ((5, 0), (7, 3), (50, 25), (10, 30)):
        items, total = admin.read_list(conn, SagaStatus.RUNNING, "s", limit, offset)
        assert [r.id for r in items] == newest_first[offset : offset + limit]
        assert total == 30
    items, total = admin.read_list(conn, SagaStatus.RUNNING, None, 3, 0)
    assert ([r.id for r in items], total) == (["other", "r29", "r28"], 31)
    conn.close()
