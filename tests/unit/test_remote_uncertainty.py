"""A remote step whose outcome may be unknown stays compensated: a transport error may come after
the command reached the participant, and doubt from an earlier attempt is not cleared by a later
attempt that ends in another transient error. A refusal under the same key is authoritative."""

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from remotekit import ORDER, Participants, build_saga
from sagaway import Engine, SagaStatus, StepFailed
from sagaway.state import Phase
from sagaway.testing import VirtualClock
from sagaway.transport.base import Command, TransportError
from sagaway.transport.stub import StubDispatcher


@pytest.fixture
async def rr() -> AsyncIterator[tuple[Engine, StubDispatcher]]:
    stub = StubDispatcher()
    Participants(stub)
    saga = build_saga("remote-uncertain")
    engine = Engine(
        "memory://",
        sagas=[saga],
        clock=VirtualClock(auto_advance=True),
        transport=stub,
        recovery_interval=3600,
    )
    async with engine:
        yield engine, stub


def failing(errors: Iterator[Exception]) -> Any:
    def reserve(command: Command) -> Any:
        raise next(errors)

    return reserve


async def run(engine: Engine, stub: StubDispatcher, *errors: Exception) -> tuple[Any, list[str]]:
    stub.register("inventory.reserve", failing(iter(errors)))
    saga = engine.definition("remote-uncertain", 1)
    record = await engine.wait(await engine.start(saga, ORDER), timeout=5)
    return record, [c.topic for c in stub.calls]


async def test_a_transport_error_on_every_attempt_compensates_the_step(rr: Any) -> None:
    engine, stub = rr
    record, topics = await run(
        engine, stub, TransportError("reset after send"), TransportError("reset after send")
    )
    assert record.status is SagaStatus.COMPENSATED
    assert record.step("reserve").uncertain
    assert topics == ["inventory.reserve", "inventory.reserve", "inventory.release"]
    release = stub.calls[-1]
    assert release.phase is Phase.COMPENSATION
    assert release.forward_key == stub.calls[0].message_id


async def test_an_earlier_timeout_keeps_the_step_uncertain(rr: Any) -> None:
    engine, stub = rr
    record, topics = await run(engine, stub, TimeoutError(), RuntimeError("connection dropped"))
    assert record.status is SagaStatus.COMPENSATED
    assert record.step("reserve").uncertain, "attempt 1 may have reserved"
    assert topics[-1] == "inventory.release", "so the release (or its tombstone) is sent"


async def test_a_refusal_after_a_timeout_is_the_answer_for_the_key(rr: Any) -> None:
    engine, stub = rr
    record, topics = await run(engine, stub, TimeoutError(), StepFailed("out of stock"))
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "out of stock"
    assert not record.step("reserve").uncertain
    assert topics == ["inventory.reserve", "inventory.reserve"], "nothing to release"
