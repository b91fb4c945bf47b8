"""Remote steps through the dispatcher port, with the stub dispatcher on the virtual clock:
request/response (the runner awaits the reply) and message transports (the saga parks, the
relay publishes its command from the outbox, a reply or the park's timeout brings it back).
The parking tests run on the memory store and on SQLite."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import remotekit
import sagaway.engine
from remotekit import ORDER, Order, Parked, Participants, Reservation, build_saga
from sagaway import Engine, Saga, SagaStatus, StepContext, StepFailed
from sagaway.hooks import Hook, StepOutcome
from sagaway.state import Phase, SagaRecord
from sagaway.testing import VirtualClock
from sagaway.transport.base import Command, TransportError
from sagaway.transport.stub import StubDispatcher

# -- request/response transports ----------------------------------------------------------------


@pytest.fixture
async def rr() -> AsyncIterator[tuple[Engine, StubDispatcher, Participants, Saga]]:
    stub = StubDispatcher()
    participants = Participants(stub)
    saga = build_saga("remote-rr")
    engine = Engine(
        "memory://",
        sagas=[saga],
        owner_id="e1",
        clock=VirtualClock(auto_advance=True),
        transport=stub,
        recovery_interval=3600,
    )
    async with engine:
        yield engine, stub, participants, saga


async def test_request_response_happy_path_mixes_local_and_remote(rr: Any) -> None:
    engine, stub, _participants, saga = rr
    saga_id = await engine.start(saga, ORDER)
    record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("reserve") == Reservation(reservation_id=f"r-{saga_id[-4:]}", qty=2)
    assert record.output("audit") == f"audited r-{saga_id[-4:]}"
    assert [c.topic for c in stub.calls] == ["inventory.reserve", "payment.charge"]
    assert stub.calls[0].message_id == f"{saga_id}:reserve:forward"
    assert stub.calls[0].payload == {"order": "o-1", "qty": 2}


async def test_request_response_business_failure_compensates_remote_steps_in_reverse(
    rr: Any,
) -> None:
    engine, stub, participants, saga = rr
    participants.refuse.add("payment.charge")
    record = await engine.wait(await engine.start(saga, ORDER), timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "payment.charge refused"
    assert [c.topic for c in stub.calls] == [
        "inventory.reserve",
        "payment.charge",
        "inventory.release",
    ], "a refused charge is not retried, not refunded (it did nothing)"
    release = stub.calls[-1]
    assert release.phase is Phase.COMPENSATION
    assert release.forward_key == stub.calls[0].message_id
    assert release.payload == stub.calls[0].payload, "same payload by default"


async def test_transport_error_is_retried_with_the_same_message_id(rr: Any) -> None:
    engine, stub, _participants, saga = rr
    failures = iter([TransportError("connection reset")])

    def flaky(command: Command) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return {"reservation_id": "r-x", "qty": 2}

    stub.register("inventory.reserve", flaky)
    record = await engine.wait(await engine.start(saga, ORDER), timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    reserves = [c for c in stub.calls if c.topic == "inventory.reserve"]
    assert [c.attempt for c in reserves] == [1, 2]
    assert len({c.message_id for c in reserves}) == 1


async def test_default_transport_fails_a_remote_step_naming_its_participant() -> None:
    saga = build_saga("remote-none")
    async with Engine("memory://", sagas=[saga], clock=VirtualClock(auto_advance=True)) as engine:
        record = await engine.wait(await engine.start(saga, ORDER), timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert "no participant 'inventory' answers 'reserve'" in (record.error or "")


async def test_compensation_payload_builder(rr: Any) -> None:
    engine, _stub, participants, saga = rr
    saga2 = Saga("remote-rr-late-fail")
    for step in saga.steps:
        saga2._add(step)  # reuse the declared steps, then fail after charge
    engine.register(saga2)

    @saga2.step
    async def boom(ctx: StepContext, order: Order) -> None:
        raise StepFailed("boom")

    record = await engine.wait(await engine.start(saga2, ORDER), timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert participants.payloads["payment.refund"] == {
        "charge": {"charge_id": "c-1"},
        "amount": 1500,
    }


@pytest.fixture(params=["memory", "sqlite"])
def parked(request: pytest.FixtureRequest, tmp_path: Path) -> Parked:
    """The parking scenarios of ``remotekit`` on the memory store and on SQLite."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    return Parked(url)


async def test_parked_happy_path_holds_no_lease_while_waiting(parked: Parked) -> None:
    await remotekit.check_parked_happy_path_holds_no_lease_while_waiting(parked)


async def test_duplicate_reply_is_applied_once(parked: Parked) -> None:
    await remotekit.check_duplicate_reply_is_applied_once(parked)


async def test_a_reply_whose_take_lost_reads_again(parked: Parked) -> None:
    await remotekit.check_a_reply_whose_take_lost_reads_again(parked)


async def test_stale_and_reordered_replies_are_ignored(parked: Parked) -> None:
    await remotekit.check_stale_and_reordered_replies_are_ignored(parked)


async def test_engine_restart_while_parked_picks_up_the_reply(parked: Parked) -> None:
    await remotekit.check_engine_restart_while_parked_picks_up_the_reply(parked)


async def test_cancel_while_parked_compensates_the_step_in_flight(parked: Parked) -> None:
    await remotekit.check_cancel_while_parked_compensates_the_step_in_flight(parked)


async def test_before_dispatch_headers_travel_with_the_command(parked: Parked) -> None:
    await remotekit.check_before_dispatch_headers_travel_with_the_command(parked)


async def test_parked_business_failure_compensates_remote_steps_in_reverse(parked: Parked) -> None:
    await remotekit.check_parked_business_failure_compensates_remote_steps_in_reverse(parked)


async def test_lost_reply_is_resent_with_the_same_key_then_compensated(
    parked: Parked,
) -> None:
    await remotekit.check_lost_reply_is_resent_with_the_same_key_then_compensated(parked)


async def test_relay_republishes_after_a_crash_between_commit_and_publish(parked: Parked) -> None:
    await remotekit.check_relay_republishes_after_a_crash_between_commit_and_publish(parked)


class StepHooks(Hook):
    """Records before_step / after_step as (hook, step, phase, attempt, outcome, error, s)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.open: set[int] = set()

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        self.open.add(id(ctx))
        self.calls.append(("before", ctx.step, ctx.phase, ctx.attempt))

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        assert id(ctx) in self.open, "after_step gets the context before_step got"
        self.open.discard(id(ctx))
        self.calls.append(("after", ctx.step, ctx.phase, outcome, error, seconds))


async def test_parked_remote_steps_fire_the_step_hooks_when_their_reply_arrives(
    parked: Parked,
) -> None:
    """A parked remote step's attempt reaches before_step/after_step (metrics per step) when
    its reply comes, timed from its command's dispatch; a refusal is a FAILED attempt, and
    the compensation it triggers is reported the same way."""
    hooks = StepHooks()
    parked.participants.refuse.add("payment.charge")
    async with parked.engine() as engine:
        engine.add_hook(hooks)
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        parked.clock.advance(3)
        await parked.stub.answer(reserve)
        charge = await parked.stub.next_command("payment.charge")
        await parked.settled()
        parked.clock.advance(1)
        await parked.stub.answer(charge)
        release = await parked.stub.next_command("inventory.release")
        await parked.settled()
        parked.clock.advance(2)
        await parked.stub.answer(release)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    forward, back = Phase.FORWARD, Phase.COMPENSATION
    assert hooks.calls == [
        ("before", "reserve", forward, 1),
        ("after", "reserve", forward, StepOutcome.SUCCEEDED, None, 3.0),
        ("before", "audit", forward, 1),  # the local step, run as before
        ("after", "audit", forward, StepOutcome.SUCCEEDED, None, hooks.calls[3][5]),
        ("before", "charge", forward, 1),
        ("after", "charge", forward, StepOutcome.FAILED, "payment.charge refused", 1.0),
        ("before", "reserve", back, 1),
        ("after", "reserve", back, StepOutcome.SUCCEEDED, None, 2.0),
    ]


async def test_a_caller_waiting_on_a_parked_saga_wakes_when_the_reply_here_finishes_it(
    parked: Parked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait`` on a parked saga returns as soon as the run that a reply started in this
    engine finishes it, not at its next look at the store (made a minute away here)."""
    monkeypatch.setattr(sagaway.engine, "WAIT_FIRST_LOOK", 60.0)
    monkeypatch.setattr(sagaway.engine, "WAIT_LONGEST_LOOK", 60.0)
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        await parked.stub.answer_next("inventory.reserve")
        charge = await parked.stub.next_command("payment.charge")
        await parked.settled()
        looked = asyncio.Event()
        read = engine.store.get

        async def get(saga_id: str, **kwargs: Any) -> SagaRecord:
            record = await read(saga_id, **kwargs)
            looked.set()
            return record

        monkeypatch.setattr(engine.store, "get", get)
        waiting = asyncio.create_task(engine.wait(saga_id))
        await looked.wait()  # it found the saga parked: now it waits for the next look
        await parked.stub.answer(charge)
        async with asyncio.timeout(30):
            record = await waiting
    assert record.status is SagaStatus.SUCCEEDED


async def test_a_caller_waiting_on_a_saga_parked_here_does_not_read_the_log_at_each_step(
    parked: Parked, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that ends with the saga parked here tells ``wait`` so: it sleeps on until a
    reply applied here finishes the saga, instead of reading the log after every step (its
    looks on the timer, made a minute away here, are for sagas driven by other engines)."""
    monkeypatch.setattr(sagaway.engine, "WAIT_FIRST_LOOK", 60.0)
    monkeypatch.setattr(sagaway.engine, "WAIT_LONGEST_LOOK", 60.0)
    async with parked.engine() as engine:
        reads = 0
        read = engine.store.get

        async def get(saga_id: str, **kwargs: Any) -> SagaRecord:
            nonlocal reads
            reads += 1
            return await read(saga_id, **kwargs)

        monkeypatch.setattr(engine.store, "get", get)
        saga_id = await engine.start(parked.saga, ORDER)
        waiting = asyncio.create_task(engine.wait(saga_id))
        await parked.stub.answer_next("inventory.reserve")
        await parked.stub.answer_next("payment.charge")
        async with asyncio.timeout(30):
            record = await waiting
    assert record.status is SagaStatus.SUCCEEDED
    # One read at most: when ``wait`` began after the first run had already parked the saga.
    assert reads <= 1, f"{reads} reads of the log while the saga went through two parks"


async def test_a_parked_remote_step_timing_out_with_no_reply_fires_the_step_hooks(
    parked: Parked,
) -> None:
    """A park that times out with no reply ends the attempt as surely as a reply would: the
    step hooks hear of it (RETRYING while the command is sent again, then FAILED), timed from
    the command's dispatch to the timeout, with the timeout as the error."""
    hooks = StepHooks()
    async with parked.engine() as engine:
        engine.add_hook(hooks)
        saga_id = await engine.start(parked.saga, ORDER)
        await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        parked.clock.advance(remotekit.TIMEOUT)
        assert await engine.recover() == 1
        await parked.stub.next_command("inventory.reserve")  # sent again, attempt 2
        await parked.settled()
        parked.clock.advance(remotekit.TIMEOUT)
        assert await engine.recover() == 1
        release = await parked.stub.next_command("inventory.release")
        await parked.stub.answer(release)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    forward, back = Phase.FORWARD, Phase.COMPENSATION
    no_reply = "timed out waiting for a reply"
    assert hooks.calls == [
        ("before", "reserve", forward, 1),
        ("after", "reserve", forward, StepOutcome.RETRYING, no_reply, remotekit.TIMEOUT),
        ("before", "reserve", forward, 2),
        ("after", "reserve", forward, StepOutcome.FAILED, no_reply, remotekit.TIMEOUT),
        ("before", "reserve", back, 1),
        ("after", "reserve", back, StepOutcome.SUCCEEDED, None, 0.0),
    ]
