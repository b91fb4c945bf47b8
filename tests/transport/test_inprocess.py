"""The transport contract over the in-process dispatcher (what ``make run`` uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagaway.participant import Participant
from sagaway.testing.transport_contract import TransportContract, TransportHarness
from sagaway.transport.inprocess import InProcessDispatcher


class InProcessHarness(TransportHarness):
    def __init__(self) -> None:
        self.dispatcher = InProcessDispatcher()

    async def register(self, participant: Participant) -> None:
        self.dispatcher.add(participant)


class TestInProcessTransport(TransportContract):
    @pytest.fixture
    async def transport(self) -> AsyncIterator[TransportHarness]:
        harness = InProcessHarness()
        async with harness.dispatcher:
            yield harness
