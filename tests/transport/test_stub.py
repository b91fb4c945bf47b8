"""The transport contract over ``StubDispatcher`` (the port's in-memory implementation for
unit tests), its handlers being the participant library's ``handle``: what a test of a saga
gets from the stub is what it would get from a real participant."""

from __future__ import annotations

import pytest

from sagaway.participant import Participant
from sagaway.testing.transport_contract import TransportContract, TransportHarness
from sagaway.transport.base import Command, Reply, TransportError
from sagaway.transport.stub import StubDispatcher


class StubHarness(TransportHarness):
    def __init__(self) -> None:
        self.stub = StubDispatcher()
        self.dispatcher = self.stub

    async def register(self, participant: Participant) -> None:
        async def handle(command: Command) -> Reply:
            try:
                return await participant.handle(command)
            except Exception as exc:  # the participant failed: as a network would say it
                raise TransportError(f"{command.topic}: {exc}") from exc

        for name in participant.commands:
            self.stub.register(f"{participant.name}.{name}", handle)


class TestStubTransport(TransportContract):
    @pytest.fixture
    def transport(self) -> TransportHarness:
        return StubHarness()
