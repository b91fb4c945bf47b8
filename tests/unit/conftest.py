"""Fixtures for the engine unit tests; the builders live in ``sagakit``."""

import pytest
from sagakit import Kit, Order


@pytest.fixture
def kit() -> Kit:
    return Kit()


@pytest.fixture
def order() -> Order:
    return Order(id="o-1", amount=50)
