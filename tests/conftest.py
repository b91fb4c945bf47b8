"""Shared by every suite. Puts ``tests/`` on ``sys.path`` so modules such as ``servers`` (the
real-server skip-or-fail helper) import the same way from unit, contract and integration tests,
whatever pytest's import mode."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
async def broker_to_ourselves() -> AsyncIterator[None]:
    """For a test that stops the broker: no other test process uses it meanwhile
    (``servers.broker_to_ourselves``). List it before any fixture that opens a vhost."""
    import servers

    async with servers.broker_to_ourselves():
        yield


def _start_order(item: pytest.Item) -> tuple[bool, float]:
    timeout = item.get_closest_marker("timeout")
    budget = float(timeout.args[0]) if timeout is not None and timeout.args else 0.0
    return item.get_closest_marker("slow") is None, -budget


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, those given the longest time budget (``timeout``) first among them,
    otherwise in collection order: with parallel workers (``make test``) the minutes-long
    crash and service tests start at once, rather than one arriving last while the other
    workers have nothing left to do."""
    items.sort(key=_start_order)
