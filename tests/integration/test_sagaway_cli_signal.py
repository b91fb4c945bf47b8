"""``sagaway waiting`` / ``list --waiting`` and ``sagaway signal`` on a real SQLite saga log:
the CLI (an API-only engine that does not know the definition) records the signal, the worker
applies it; duplicates change nothing; a signal the saga does not wait for is refused."""

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagaway import Engine, EventType, Saga, SagaStatus, StepContext
from sagaway.cli import app

runner = CliRunner()
saga = Saga("cli-wait")


@saga.step
async def reserve(ctx: StepContext, data: dict[str, int]) -> int:
    return data["n"]


saga.wait("payment_confirmed", timeout=900)


@saga.step
async def ship(ctx: StepContext, data: dict[str, int]) -> object:
    return ctx.results["payment_confirmed"]


async def _park(url: str) -> str:
    async with Engine(url, sagas=[saga], recovery_interval=3600) as engine:
        saga_id = await engine.start(saga, {"n": 1})
        for _ in range(500):
            record = await engine.store.get(saga_id, history=False)
            if record.waiting_for is not None:
                return saga_id
            await asyncio.sleep(0.01)
    raise AssertionError("the saga never parked")


async def _finish(url: str, saga_id: str) -> tuple[SagaStatus, object, int]:
    async with Engine(url, sagas=[saga], recovery_interval=3600) as engine:
        record = await engine.wait(saga_id, timeout=10)
        full = await engine.get(saga_id)
    received = sum(1 for e in full.history if e.type is EventType.SIGNAL_RECEIVED)
    return record.status, record.output("ship"), received


@pytest.fixture
def parked(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    return url, asyncio.run(_park(url))


def test_waiting_lists_the_saga_and_signal_resumes_it_once(parked: tuple[str, str]) -> None:
    url, saga_id = parked
    listed = runner.invoke(app, ["--store", url, "waiting", "payment_confirmed", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["sagas"]
    assert [(r["id"], r["waiting_for"]) for r in rows] == [(saga_id, "signal:payment_confirmed")]
    table = runner.invoke(app, ["--store", url, "list", "--waiting", "payment_confirmed"])
    assert saga_id in table.output
    assert "signal:payment_confirmed" in table.output
    shown = runner.invoke(app, ["--store", url, "show", saga_id])
    assert "waiting for signal:payment_confirmed until" in shown.output
    none = runner.invoke(app, ["--store", url, "list", "--waiting", "timer", "--json"])
    assert json.loads(none.output)["sagas"] == []

    args = ["--store", url, "signal", saga_id[:12], "payment_confirmed"]
    sent = runner.invoke(app, [*args, "--payload", '{"by": "alice"}', "--signal-id", "s-1"])
    assert sent.exit_code == 0, sent.output
    assert "recorded" in sent.output
    again = runner.invoke(app, [*args, "--payload", '{"by": "alice"}', "--signal-id", "s-1"])
    assert again.exit_code == 0
    assert "already delivered" in again.output

    status, output, received = asyncio.run(_finish(url, saga_id))
    assert status is SagaStatus.SUCCEEDED
    assert output == {"by": "alice"}
    assert received == 1


def test_a_signal_the_saga_does_not_wait_for_is_refused(parked: tuple[str, str]) -> None:
    url, saga_id = parked
    wrong = runner.invoke(app, ["--store", url, "signal", saga_id, "payment_cancelled"])
    assert wrong.exit_code == 1
    assert "waits for signal:payment_confirmed" in wrong.output
    bad = runner.invoke(
        app, ["--store", url, "signal", saga_id, "payment_confirmed", "--payload", "{nope"]
    )
    assert bad.exit_code == 1
    assert "--payload is not JSON" in bad.output
    unknown = runner.invoke(app, ["--store", url, "signal", "zzz", "payment_confirmed"])
    assert unknown.exit_code == 1
    assert "not found" in unknown.output
