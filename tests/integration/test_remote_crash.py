"""Crash tests of remote steps on a message transport: a worker process parks its saga on each
remote step and is SIGKILLed (right after a transition commits and before the relay publishes
its command, or inside a participant after its commit and before its reply leaves); an engine
restarted on the same saga log finishes it. Each ends with the saga terminal, every effect
applied exactly once at the participants (their own table, keyed by message id), the outbox
empty and the lease released: the relay's sweep re-publishes what the crash left unsent, the
park's timeout re-sends a command whose reply was lost (same message id: the inbox answers)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from remote_crash_saga import KEY, OWNER, REPLY_TIMEOUT, Participants, build_saga

from sagaway import Engine, SagaStatus
from sagaway.clock import SystemClock
from sagaway.state import SagaRecord
from sagaway.store import open_store
from sagaway.store.base import OutboxStore
from servers import durable_store_url

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("remote_crash_worker.py")


class ShiftedClock(SystemClock):
    """The system clock, ``offset`` seconds ahead: the restarted engine sees the outbox's
    messages as old enough to sweep (5 s; the park's timeout, an hour, stays far off) or, for
    the scenarios that re-send, the park's timeout as passed too (an hour and 5 s)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return super().now() + self.offset


@dataclass(frozen=True)
class Scenario:
    variant: str
    kill: str
    waiting_for: str  # what the saga waits for in the log right after the kill
    unsent: int  # outbox messages the crash left unpublished (at least)
    resent: bool  # True: the park times out and the command goes again (attempt 2)

    def __str__(self) -> str:
        return f"{self.variant}-{self.kill}"


SCENARIOS = [
    # killed after the commit that parks the saga, before the relay publishes its command
    Scenario("ok", "after:1", "reply:inventory.reserve", 1, False),
    Scenario("ok", "after:2", "reply:payment.charge", 1, False),
    Scenario("fail", "after:4", "reply:payment.refund", 1, False),
    Scenario("fail", "after:5", "reply:inventory.release", 1, False),
    # killed in the participant after its commit: the reply is lost, the command re-sent
    Scenario("ok", "handler:inventory.reserve:1", "reply:inventory.reserve", 0, True),
    Scenario("ok", "handler:payment.charge:1", "reply:payment.charge", 0, True),
    Scenario("fail", "handler:payment.refund:1", "reply:payment.refund", 0, True),
    Scenario("fail", "handler:inventory.release:1", "reply:inventory.release", 0, True),
]


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with durable_store_url(request.param, tmp_path, "rcrash") as url:
        yield url


async def _only_saga(url: str) -> tuple[SagaRecord, int]:
    async with open_store(url) as store:
        page = await store.list_sagas()
        assert len(page.items) == 1, page.items
        assert isinstance(store, OutboxStore)
        return await store.get(page.items[0].id), await store.outbox_count()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
async def test_killed_engine_or_participant_each_effect_once(
    store_url: str, tmp_path: Path, scenario: Scenario
) -> None:
    participants_db = tmp_path / "participants.db"
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, str(WORKER), store_url, str(participants_db)),
        *(scenario.variant, scenario.kill),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(worker.communicate(), timeout=120)
    assert worker.returncode == -signal.SIGKILL, (
        f"worker was not killed where intended: {worker.returncode} "
        f"{out.decode().strip()} {err.decode()[-2000:]}"
    )

    at_kill, unsent = await _only_saga(store_url)
    assert at_kill.waiting_for == scenario.waiting_for
    assert at_kill.owner is None, "a parked saga holds no lease"
    # What was committed and not yet published must be there. More may be: the relay deletes
    # published messages in background batches, which the kill can beat (the sweep then
    # publishes them again, and the inbox answers those as duplicates: checked below).
    assert unsent >= scenario.unsent

    side = Participants(participants_db)
    stub = side.dispatcher()
    offset = REPLY_TIMEOUT + 5 if scenario.resent else 5.0
    engine = Engine(
        store_url,
        sagas=[build_saga(scenario.variant)],
        owner_id="restarted",
        transport=stub,
        clock=ShiftedClock(offset),
        recovery_interval=0.05,
    )
    async with engine:
        record = await engine.wait(at_kill.id, timeout=60)
        # What the crash left in the outbox is published even after the saga finished (its
        # reply is then stale); the maintainer sweeps every 50 ms, this makes it certain.
        await engine.relay_outbox()
    final = SagaStatus.SUCCEEDED if scenario.variant == "ok" else SagaStatus.COMPENSATED
    assert record.status is final, record.error

    saga_id = record.id
    expected = [(f"{saga_id}:reserve:forward", "inventory.reserve")]
    expected.append((f"{saga_id}:pay:forward", "payment.charge"))
    if final is SagaStatus.COMPENSATED:
        expected.append((f"{saga_id}:pay:compensation", "payment.refund"))
        expected.append((f"{saga_id}:reserve:compensation", "inventory.release"))
    assert side.effects() == sorted(expected), "each command took effect once, by message id"

    topic = scenario.waiting_for.removeprefix("reply:")
    sent = [c for c in stub.calls if c.topic == topic]
    in_flight = [c.attempt for c in sent]
    if scenario.resent:
        assert 2 in in_flight, "the park timed out: sent again as attempt 2"
    else:
        # The park cannot have timed out (an hour away): a second attempt here is a reply the
        # restarted engine lost, not a slow one.
        assert in_flight == [1], "swept from the outbox, not re-sent"
    assert len({c.message_id for c in sent}) == 1, "every attempt under the same message id"

    after, outbox = await _only_saga(store_url)
    assert outbox == 0, "the relay deleted every message it published"
    assert after.owner is None
    assert after.waiting_for is None
    assert after.idempotency_key == KEY
    assert OWNER in {e.detail for e in after.history if e.detail}
