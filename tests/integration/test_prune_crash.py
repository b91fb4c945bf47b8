"""A ``sagaway prune --archive`` killed between archiving a batch and deleting it (issue 14):
every finished saga is then in the log (whole: steps and history) or in the archive, the
batches deleted before the kill are gone whole, and pruning again finishes the job. On SQLite,
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from prune_killer import CUTOFF
from test_crash_recovery import store_url  # noqa: F401 - the fixture: a log on each store

from sagaway import archive
from sagaway.retention import prune_finished, pruning_store
from sagaway.state import Event, EventType, NewSaga, Phase, SagaStatus, StepRecord, StepStatus
from sagaway.store import open_store

KILLER = Path(__file__).with_name("prune_killer.py")
T0 = 1_000_000.0
pytestmark = pytest.mark.slow


def _saga(saga_id: str, status: SagaStatus) -> NewSaga:
    steps = [
        StepRecord(name, Phase.FORWARD, StepStatus.SUCCEEDED, 1, {"n": n}, started_at=T0)
        for n, name in enumerate(("reserve", "pay", "ship"))
    ]
    events = [Event(at=T0, type=EventType.SAGA_STARTED)] + [
        Event(at=T0, type=t, step=s.name, attempt=1)
        for s in steps
        for t in (EventType.STEP_STARTED, EventType.STEP_SUCCEEDED)
    ]
    return NewSaga(
        id=saga_id,
        name="shop",
        version=1,
        input={"order": saga_id},
        at=T0,
        status=status,
        steps=steps,
        events=events,
    )


async def test_a_prune_killed_after_archiving_a_batch_loses_nothing(
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    finished = [f"done-{i:02}" for i in range(30)]
    kept = [f"run-{i}" for i in range(3)] + [f"failed-{i}" for i in range(3)]
    async with open_store(store_url) as store:
        for saga_id in finished:
            await store.create(_saga(saga_id, SagaStatus.SUCCEEDED))
        for saga_id in kept:
            status = SagaStatus.RUNNING if saga_id.startswith("run") else SagaStatus.FAILED
            await store.create(_saga(saga_id, status))
    path = tmp_path / "archive.jsonl"
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(KILLER), store_url, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().split()
    assert line[0] == "ARCHIVED", line
    held = set(line[1:])
    child.send_signal(signal.SIGKILL)
    await child.wait()

    archived = {r.split('"id":"', 1)[1].split('"', 1)[0] for r in path.read_text().splitlines()}
    async with open_store(store_url) as opened:
        store = pruning_store(opened)
        in_log = {r.id for r in (await store.list_sagas(limit=100)).items}
        assert set(kept) <= in_log
        assert set(finished) <= in_log | archived  # nothing lost
        gone = set(finished) - in_log
        assert len(gone) == 10  # the first batch, deleted before the kill
        assert gone <= archived
        assert held <= in_log  # archived, then killed before its delete
        assert len(held) == 10
        assert archived == gone | held
        for saga_id in in_log:  # what is left is whole
            record = await store.get(saga_id)
            assert len(record.steps) == 3
            assert len(record.history) == 7
        if store_url.startswith("sqlite"):
            conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
            for table in ("sagaway_steps", "sagaway_events"):
                orphans = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE saga_id NOT IN "
                    "(SELECT id FROM sagaway_instances)"
                ).fetchone()[0]
                assert orphans == 0, table
            conn.close()

        async def write_out(ids: list[str]) -> None:
            archive.append(path, [r for r in [await store.load(i) for i in ids] if r])

        removed, done = await prune_finished(
            store, finished_before=CUTOFF, batch=10, before_delete=write_out
        )
        assert done
        assert set(removed) == set(finished) - gone
        assert {r.id for r in (await store.list_sagas(limit=100)).items} == set(kept)
    for saga_id in finished:  # every one reads back from the archive, whole
        record = archive.find(path, saga_id)
        assert (record.status, len(record.steps), len(record.history)) == (
            SagaStatus.SUCCEEDED,
            3,
            7,
        )
