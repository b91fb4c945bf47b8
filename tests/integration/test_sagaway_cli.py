"""The ``sagaway`` admin CLI on a real SQLite saga log (issue 10 items 1, 5, 6, 7): ``--store``
before the command or ``SAGAWAY_STORE_URL``, ids whole and any unique prefix, ``--json``, steps
in the order they ran, stalled sagas flagged, and a missing file is an error, never created."""

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.cli import app
from sagaway.state import NewSaga

runner = CliRunner()
NARROW = {"COLUMNS": "80"}  # what a default terminal (and CliRunner) gives Rich


async def _fill(url: str) -> list[str]:
    saga = Saga("cli-order")

    @saga.step
    async def reserve(ctx: StepContext, data: dict[str, int]) -> int:
        return data["n"]

    @reserve.compensation
    async def release(ctx: StepContext, data: dict[str, int], output: int | None) -> None:
        return None

    @saga.step(retry=RetryPolicy(max_attempts=1))
    async def pay(ctx: StepContext, data: dict[str, int]) -> None:
        if data["n"] < 0:
            raise StepFailed("Insufficient funds")

    async with Engine(url, sagas=[saga]) as engine:
        ids = [await engine.start(saga, {"n": n}) for n in (1, -1)]
        for saga_id in ids:
            await engine.wait(saga_id, timeout=10)
        for saga_id in ("abc123-one", "abc123-two"):  # a dead worker's, lease long expired
            await engine.store.create(
                NewSaga(
                    id=saga_id,
                    name="lost",
                    version=7,
                    input=None,
                    at=1_700_000_000.0,
                    status=SagaStatus.RUNNING,
                    owner="dead",
                    lease_expires_at=1_700_000_005.0,
                )
            )
    return ids


@pytest.fixture
def log(tmp_path: Path) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    return url, asyncio.run(_fill(url))


def test_store_before_the_command_and_from_the_environment(log: tuple[str, list[str]]) -> None:
    url, _ = log
    for args, env in [
        (["--store", url, "list"], {}),
        (["list"], {"SAGAWAY_STORE_URL": url}),
        (["list", "--store", url], {}),  # per command, as before
        (["--store", "sqlite:///elsewhere.db", "list", "--store", url], {}),  # closest wins
    ]:
        result = runner.invoke(app, args, env={**NARROW, **env})
        assert result.exit_code == 0, (args, result.output)
        assert "of 4" in result.output


def test_list_prints_ids_whole_at_80_columns_and_flags_stalled_sagas(
    log: tuple[str, list[str]],
) -> None:
    url, ids = log
    result = runner.invoke(app, ["--store", url, "list"], env=NARROW)
    assert result.exit_code == 0, result.output
    listed = {line.split()[0]: line for line in result.output.splitlines()[2:] if line[:1] != "s"}
    assert set(listed) == {*ids, "abc123-one", "abc123-two"}, result.output
    assert "RUNNING (stalled)" in listed["abc123-one"]
    assert "stalled" not in listed[ids[0]]
    assert "lost v7 (2)" in result.output


def test_list_json(log: tuple[str, list[str]]) -> None:
    url, ids = log
    result = runner.invoke(app, ["--store", url, "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["total"] == 4
    by_id = {saga["id"]: saga for saga in listed["sagas"]}
    assert set(by_id) == {*ids, "abc123-one", "abc123-two"}
    assert by_id["abc123-one"]["stalled"] is True
    assert by_id[ids[0]]["stalled"] is False
    assert by_id[ids[0]]["status"] == "SUCCEEDED"
    assert datetime.fromisoformat(by_id[ids[0]]["created_at"]).tzinfo is not None


def test_show_takes_a_unique_prefix_and_lists_steps_in_the_order_they_ran(
    log: tuple[str, list[str]],
) -> None:
    url, ids = log
    compensated = ids[1]
    result = runner.invoke(app, ["--store", url, "show", compensated[:20], "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["id"] == compensated
    assert shown["status"] == "COMPENSATED"
    assert [(s["name"], s["phase"]) for s in shown["steps"]] == [
        ("reserve", "forward"),
        ("pay", "forward"),
        ("reserve", "compensation"),
    ]
    started = [datetime.fromisoformat(s["started_at"]) for s in shown["steps"]]
    assert started == sorted(started)
    assert all(at.year >= 2024 and at.tzinfo is not None for at in started)
    table = runner.invoke(app, ["--store", url, "show", compensated[:20]], env=NARROW)
    assert table.exit_code == 0, table.output
    assert compensated in table.output
    lines = table.output.splitlines()
    steps = lines[lines.index("steps, in the order they ran:") + 2 :][:3]
    assert [line.split()[:2] for line in steps] == [
        ["reserve", "forward"],
        ["pay", "forward"],
        ["reserve", "compensation"],
    ]
    for step in shown["steps"]:  # timestamps whole in the table too
        assert step["started_at"] in table.output


def test_ambiguous_and_unknown_prefixes_are_errors(log: tuple[str, list[str]]) -> None:
    url, _ = log
    for command in ("show", "cancel", "retry"):
        ambiguous = runner.invoke(app, ["--store", url, command, "abc123"])
        assert ambiguous.exit_code == 1, ambiguous.output
        assert "ambiguous" in ambiguous.output
        assert "abc123-one" in ambiguous.output
        unknown = runner.invoke(app, ["--store", url, command, "zzz"])
        assert unknown.exit_code == 1
        assert "not found" in unknown.output


def test_cancel_takes_a_unique_prefix(log: tuple[str, list[str]]) -> None:
    url, _ = log
    result = runner.invoke(app, ["--store", url, "cancel", "abc123-t"])
    assert result.exit_code == 0, result.output
    assert "abc123-two" in result.output
    shown = json.loads(runner.invoke(app, ["--store", url, "show", "abc123-two", "--json"]).output)
    assert shown["cancel_requested"] is True


@pytest.mark.parametrize("command", [["list"], ["show", "abc"], ["stats"], ["cancel", "abc"]])
def test_a_missing_sqlite_file_is_an_error_and_is_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo.db"
    result = runner.invoke(app, ["--store", f"sqlite:///{missing}", *command])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert not missing.exists()
