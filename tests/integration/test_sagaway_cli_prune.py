"""``sagaway prune``, ``pin``, ``unpin`` and ``show --archive`` on a real SQLite saga log
(issue 14): only finished, unpinned sagas go; a bad DATE is a usage error (exit 2); an archived
saga reads back with the same steps and timeline ``show`` gave before it was pruned."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.cli import app
from sagaway.state import NewSaga

runner = CliRunner()

flow = Saga("cli-prune")


@flow.step
async def reserve(ctx: StepContext, data: dict[str, int]) -> dict[str, int]:
    return {"reserved": data["n"]}


@reserve.compensation
async def release(ctx: StepContext, data: dict[str, int], output: Any) -> None:
    if data["n"] == 0:
        raise RuntimeError("inventory down")  # FAILED: an operator's to retry, never pruned


@flow.step(retry=RetryPolicy(max_attempts=1))
async def pay(ctx: StepContext, data: dict[str, int]) -> None:
    if data["n"] <= 0:
        raise StepFailed("Insufficient funds")


async def _fill(url: str) -> dict[str, str]:
    async with Engine(url, sagas=[flow]) as engine:
        ids = {}
        for label, n in (("ok", 1), ("ok2", 2), ("pinned", 3), ("compensated", -1), ("failed", 0)):
            ids[label] = await engine.start(flow, {"n": n})
            await engine.wait(ids[label], timeout=10)
        await engine.store.create(
            NewSaga(id="running-1", name="elsewhere", version=1, input=None, at=1.0)
        )
        ids["running"] = "running-1"
        statuses = {k: (await engine.store.get(v)).status for k, v in ids.items()}
    assert statuses["failed"] is SagaStatus.FAILED
    assert statuses["compensated"] is SagaStatus.COMPENSATED
    return ids


@pytest.fixture
def log(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    return url, asyncio.run(_fill(url))


def _cli(url: str, *args: str) -> Any:
    return runner.invoke(app, ["--store", url, *args], env={"COLUMNS": "200"})


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _listed(url: str) -> dict[str, dict[str, Any]]:
    result = _cli(url, "list", "--json", "--limit", "100")
    assert result.exit_code == 0, result.output
    return {s["id"]: s for s in json.loads(result.output)["sagas"]}


def test_bad_or_future_dates_are_usage_errors(log: tuple[str, dict[str, str]]) -> None:
    url, _ = log
    for bad in ("yesterday", "2026-13-01", ""):
        result = _cli(url, "prune", "--finished-before", bad)
        assert result.exit_code == 2, result.output
        assert "is not a date" in result.output
    future = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
    result = _cli(url, "prune", "--finished-before", future)
    assert result.exit_code == 2
    assert "in the future" in result.output
    assert len(_listed(url)) == 6  # nothing touched


def test_prune_removes_finished_unpinned_sagas_only(log: tuple[str, dict[str, str]]) -> None:
    url, ids = log
    result = _cli(url, "pin", ids["pinned"][:20])
    assert result.exit_code == 0
    assert f"saga {ids['pinned']} pinned" in result.output
    assert _listed(url)[ids["pinned"]]["pinned"] is True

    # Sagas that finished after the cutoff stay.
    result = _cli(url, "prune", "--finished-before", "2020-01-01")
    assert (result.exit_code, result.output) == (
        0,
        "pruned 0 finished saga(s) last written before 2020-01-01T00:00:00.000+00:00\n",
    )
    cutoff = _now()
    result = _cli(url, "prune", "--finished-before", cutoff, "--dry-run", "--verbose")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("would prune 3 finished saga(s) last written before")
    assert sorted(lines[1:]) == sorted([ids["ok"], ids["ok2"], ids["compensated"]])
    assert len(_listed(url)) == 6  # a dry run removes nothing

    result = _cli(url, "prune", "--finished-before", cutoff, "-v", "--batch", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("pruned 3 finished saga(s)")
    assert sorted(lines[1:]) == sorted([ids["ok"], ids["ok2"], ids["compensated"]])
    assert set(_listed(url)) == {ids["pinned"], ids["failed"], "running-1"}
    assert _cli(url, "show", ids["ok"]).exit_code == 1

    # Unpinned, it goes on the next prune.
    assert _cli(url, "unpin", ids["pinned"]).exit_code == 0
    assert _listed(url)[ids["pinned"]]["pinned"] is False
    result = _cli(url, "prune", "--finished-before", _now())
    assert result.output.startswith("pruned 1 finished saga(s)")
    assert set(_listed(url)) == {ids["failed"], "running-1"}
    assert _cli(url, "pin", "no-such-saga").exit_code == 1


def test_an_archived_saga_reads_back_as_show_printed_it(
    log: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = log
    before = {}
    for label in ("ok", "compensated"):
        result = _cli(url, "show", ids[label], "--json")
        assert result.exit_code == 0, result.output
        before[label] = json.loads(result.output)
        assert len(before[label]["history"]) >= 4
    text_before = _cli(url, "show", ids["compensated"]).output
    archive = tmp_path / "archive.jsonl"
    result = _cli(url, "prune", "--finished-before", _now(), "--archive", str(archive))
    assert result.exit_code == 0, result.output
    assert f"archived to {archive}" in result.output
    assert (
        len(archive.read_text().splitlines()) == 4
    )  # ok, ok2, pinned (not pinned here), compensated

    for label in ("ok", "compensated"):
        assert _cli(url, "show", ids[label]).exit_code == 1  # gone from the log
        result = runner.invoke(app, ["show", "--archive", str(archive), ids[label], "--json"])
        assert result.exit_code == 0, result.output
        after = json.loads(result.output)
        for field in ("id", "name", "status", "input", "steps", "history", "created_at", "error"):
            assert after[field] == before[label][field], field
    result = runner.invoke(
        app, ["show", "--archive", str(archive), ids["compensated"]], env={"COLUMNS": "200"}
    )
    assert result.output == text_before
    missing = runner.invoke(app, ["show", "--archive", str(archive), ids["failed"]])
    assert missing.exit_code == 1
    assert "not found" in missing.output
    nowhere = runner.invoke(app, ["show", "--archive", str(tmp_path / "none"), "x"])
    assert nowhere.exit_code == 1
    assert "cannot read the archive" in nowhere.output
