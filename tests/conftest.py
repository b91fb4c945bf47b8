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
