"""Crash tests with real processes, on every durable store (SQLite, PostgreSQL, Redis).

A worker process (``crash_worker.py``) runs one saga of ``crash_saga.py`` and SIGKILLs itself
at one exact point: after a durable transition, inside an action or compensation (after its
effect, before its outcome is recorded), inside a retry, during a retry's backoff, inside a
pivot and the retriable step after it, inside an operator's retry of a FAILED saga, inside a
compensation's retry. Then the test

1. reads the log right after the kill and checks which rows are RUNNING/COMPENSATING and which
   are finished (so the kill happened where the scenario says, with the saga unfinished),
2. resumes the saga in-process on the same log with the same owner id, and
3. checks the final status, every step row, every call of every action and compensation (1 for
   a call whose outcome was recorded, one more for each interrupted call: an engine that re-ran
   recorded steps fails here even though the participant dedupes) and the exact set of effects
   by idempotency key (an engine that retried under a new key would apply a second effect).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crash_saga import OWNER, Participant, build_saga

from sagaway import Engine, Phase, SagaStatus
from sagaway.state import SagaRecord
from sagaway.store import open_store
from servers import durable_store_url

WORKER = Path(__file__).with_name("crash_worker.py")
pytestmark = pytest.mark.slow

FORWARD_EFFECTS = {"reserve": "reserve", "pay": "pay", "ship": "ship"}
UNDO_EFFECTS = {"pay": "refund", "reserve": "release"}


@dataclass(frozen=True)
class Scenario:
    variant: str
    kill: str
    at_kill: str
    """The saga's status, then ``step=STATUS[#attempts]`` per row (``step/c``: compensation)."""
    calls: dict[str, int]
    """Calls of each action/compensation from start to finish, the killed process's included."""

    @property
    def final(self) -> SagaStatus:
        return SagaStatus.COMPENSATED if "release" in self.calls else SagaStatus.SUCCEEDED

    def __str__(self) -> str:
        return f"{self.variant}-{self.kill}"


def calls(reserve: int = 1, pay: int = 1, ship: int = 1, **undo: int) -> dict[str, int]:
    return {"reserve": reserve, "pay": pay, "ship": ship, **undo}


S, R = "SUCCEEDED", "RUNNING"
UNDONE = {"refund": 1, "release": 1}
SCENARIOS = [
    # every durable transition and every action of a saga that succeeds
    Scenario("ok", "after:0", f"RUNNING reserve={R}", calls()),
    Scenario("ok", "after:1", f"RUNNING reserve={S} pay={R}", calls()),
    Scenario("ok", "after:2", f"RUNNING reserve={S} pay={S} ship={R}", calls()),
    Scenario("ok", "in:reserve:1", f"RUNNING reserve={R}", calls(reserve=2)),
    Scenario("ok", "in:pay:1", f"RUNNING reserve={S} pay={R}", calls(pay=2)),
    Scenario("ok", "in:ship:1", f"RUNNING reserve={S} pay={S} ship={R}", calls(ship=2)),
    # ... and of one that compensates (ship rejects)
    Scenario("fail", "after:2", f"RUNNING reserve={S} pay={S} ship={R}", calls(**UNDONE)),
    Scenario("fail", "in:pay:1", f"RUNNING reserve={S} pay={R}", calls(pay=2, **UNDONE)),
    Scenario("fail", "in:ship:1", f"RUNNING reserve={S} pay={S} ship={R}", calls(ship=2, **UNDONE)),
    Scenario(
        "fail",
        "after:3",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATING",
        calls(**UNDONE),
    ),
    Scenario(
        "fail",
        "in:refund:1",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATING",
        calls(refund=2, release=1),
    ),
    Scenario(
        "fail",
        "after:4",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATED reserve/c=COMPENSATING",
        calls(**UNDONE),
    ),
    Scenario(
        "fail",
        "in:release:1",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATED reserve/c=COMPENSATING",
        calls(refund=1, release=2),
    ),
    # inside a retry (pay's first response was lost), and during the backoff before it
    Scenario("flaky", "in:pay:2", f"RUNNING reserve={S} pay={R}#2", calls(pay=3)),
    Scenario("flaky", "backoff:1", f"RUNNING reserve={S} pay={R}", calls(pay=2)),
    # inside a compensation's retry (refund's first response was lost), and its backoff
    Scenario(
        "undo_flaky",
        "in:refund:2",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATING#2",
        calls(refund=3, release=1),
    ),
    Scenario(
        "undo_flaky",
        "backoff:1",
        f"COMPENSATING reserve={S} pay={S} ship=FAILED pay/c=COMPENSATING",
        calls(refund=2, release=1),
    ),
    # inside the pivot, and inside the retriable step after it
    Scenario("pivot", "in:pay:1", f"RUNNING reserve={S} pay={R}", calls(pay=2)),
    Scenario("pivot", "in:ship:1", f"RUNNING reserve={S} pay={S} ship={R}", calls(ship=2)),
    # inside an operator's retry of the saga that stopped FAILED past the pivot
    Scenario("operator", "in:ship:2", f"RUNNING reserve={S} pay={S} ship={R}#2", calls(ship=3)),
]


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh saga log on each durable store, removed afterwards."""
    async with durable_store_url(request.param, tmp_path, "crash") as url:
        yield url


def _rows(record: SagaRecord) -> dict[str, str]:
    """``step`` / ``step/c`` -> ``STATUS#attempts`` for every row of the saga."""
    return {
        name + ("/c" if phase is Phase.COMPENSATION else ""): f"{row.status}#{row.attempts}"
        for (name, phase), row in record.steps.items()
    }


def _expected_rows(at_kill: str) -> tuple[str, dict[str, str]]:
    status, *rows = at_kill.split()
    pairs = (row.split("=") for row in rows)
    return status, {name: value if "#" in value else f"{value}#1" for name, value in pairs}


async def _only_saga(url: str) -> SagaRecord:
    async with open_store(url) as store:
        page = await store.list_sagas()
        assert len(page.items) == 1, page.items
        return await store.get(page.items[0].id)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
async def test_killed_worker_resumes_and_applies_each_effect_once(
    store_url: str, tmp_path: Path, scenario: Scenario
) -> None:
    effects_db = tmp_path / "effects.db"
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, str(WORKER), store_url, str(effects_db)),
        *(scenario.variant, scenario.kill),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(worker.communicate(), timeout=120)
    assert worker.returncode == -signal.SIGKILL, (
        f"worker was not killed where intended: {worker.returncode} "
        f"{out.decode().strip()} {err.decode()[-2000:]}"
    )

    at_kill = await _only_saga(store_url)
    status, rows = _expected_rows(scenario.at_kill)
    assert (at_kill.status, _rows(at_kill)) == (status, rows), "the log right after the kill"
    assert at_kill.owner == OWNER

    side = Participant(effects_db)
    saga = build_saga(scenario.variant, side)
    async with Engine(store_url, sagas=[saga], owner_id=OWNER) as engine:
        record = await engine.wait(at_kill.id, timeout=60)
    assert record.status is scenario.final, record.error

    assert dict(side.calls()) == scenario.calls, "calls per action/compensation"
    saga_id = record.id
    expected = {(f"{saga_id}:{step}:forward", what) for step, what in FORWARD_EFFECTS.items()}
    if scenario.final is SagaStatus.COMPENSATED:
        expected.discard((f"{saga_id}:ship:forward", "ship"))  # ship rejected: no effect
        expected |= {(f"{saga_id}:{step}:compensation", w) for step, w in UNDO_EFFECTS.items()}
    assert side.effects() == expected, "one effect per step, under the step's own key"

    final = await _only_saga(store_url)
    if scenario.final is SagaStatus.SUCCEEDED:
        assert {k: v.split("#")[0] for k, v in _rows(final).items()} == dict.fromkeys(
            ("reserve", "pay", "ship"), S
        )
    else:
        assert {k: v.split("#")[0] for k, v in _rows(final).items()} == {
            "reserve": S,
            "pay": S,
            "ship": "FAILED",
            "pay/c": "COMPENSATED",
            "reserve/c": "COMPENSATED",
        }
    assert final.owner is None, "the lease was released"
