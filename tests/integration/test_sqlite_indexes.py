"""The SQLite log's secondary indexes since schema version 13 (no owner index; the claim index
keyed by status and owner): what the queries that run every recovery pass read, and that a
version 12 log migrates and keeps working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sagaway.state import Change, Phase, SagaStatus, StepRecord, StepStatus
from sagaway.store import _sqlite_admin as admin
from sagaway.store import _sqlite_ops as ops
from sagaway.store._sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from sagaway.store.sqlite import SQLiteStore

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
    # (sagaway_instances_open holds every active saga) made each pass read them all.
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
        assert not any("sagaway_instances_open" in step for step in plan), (sql, plan)
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
    assert "sagaway_instances_free (status=? AND owner=?)" in plan, plan
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


async def test_a_version_12_log_is_migrated_and_keeps_working(db: Path) -> None:
    # A log with the owner index and the claim index keyed by the lease (version 12), a saga
    # in flight, one parked, one queued and one finished: opening it drops and rebuilds the
    # indexes, and claims, renewal, commits, listings and retention all go on.
    old = sqlite3.connect(db)
    old.execute("CREATE TABLE sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)")
    for version in range(1, 13):
        for statement in MIGRATIONS[version - 1]:
            old.execute(statement)
        old.execute("INSERT INTO sagaway_schema (version) VALUES (?)", (version,))
    old.executemany(
        "INSERT INTO sagaway_instances (id, name, version, status, input, owner, "
        "lease_expires_at, waiting_for, parked_until, created_at, updated_at) "
        "VALUES (?, 's', 1, ?, '{}', ?, ?, ?, ?, ?, ?)",
        [
            ("done", "SUCCEEDED", None, None, None, None, T0, T0 + 1),
            ("running", "RUNNING", "e1", T0 + 60, None, None, T0 + 1, T0 + 1),
            ("parked", "RUNNING", None, None, "signal:go", T0 + 12, T0 + 2, T0 + 2),
            ("queued", "PENDING", None, None, None, None, T0 + 3, T0 + 3),
        ],
    )
    old.commit()
    old.close()
    async with SQLiteStore(url_of(db)) as store:
        listed = [r.id for r in (await store.list_sagas()).items]
        assert listed == ["queued", "parked", "running", "done"]
        assert await store.renew_leases("e1", now=T0 + 10, lease_seconds=30) == []
        assert (await store.get("running")).lease_expires_at == T0 + 40
        claimed = await store.claim(
            "e2", now=T0 + 10, lease_seconds=5, definitions=[("s", 1)], limit=5
        )
        assert [r.id for r in claimed] == ["queued"]
        claimed = await store.claim(
            "e2", now=T0 + 14, lease_seconds=5, definitions=[("s", 1)], limit=5
        )
        assert [r.id for r in claimed] == ["parked"]  # due now; the others' leases live
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
    assert "(status, owner) WHERE waiting_for IS NULL" in indexes["sagaway_instances_free"]
