"""Durable waits (``Saga.wait``, ``Saga.sleep``, ``Engine.signal``) on the memory store and on
SQLite, on the virtual clock: the scenarios of ``waitkit``."""

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import waitkit
from sagaway import DefinitionError, Saga
from waitkit import Waits


@pytest.fixture(params=["memory", "sqlite"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Waits:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    return Waits(url)


@pytest.mark.parametrize("scenario", waitkit.ALL, ids=lambda f: f.__name__.removeprefix("check_"))
async def test_waits(kit: Waits, scenario: Callable[[Waits], Coroutine[Any, Any, None]]) -> None:
    await scenario(kit)


def test_bad_wait_declarations_fail_at_import_time() -> None:
    saga = Saga("wait-bad-declarations")
    with pytest.raises(DefinitionError, match="timeout is required"):
        saga.wait("confirmed", timeout=None)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="bad signal name"):
        saga.wait("has space", timeout=1)
    with pytest.raises(DefinitionError, match="seconds or until"):
        saga.sleep("nap")
    with pytest.raises(DefinitionError, match="seconds >= 0"):
        saga.sleep("nap", seconds=-1)
