"""Remote steps through the dispatcher port, with the stub dispatcher on the virtual clock:
request/response (the runner awaits the reply) and message transports (the saga parks, the
relay publishes its command from the outbox, a reply or the park's timeout brings it back).
The parking tests run on the memory store and on SQLite."""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.hooks import Hook
from sagaway.state import EventType, Phase, SagaRecord, StepStatus
from sagaway.store import SagaStore, open_store
from sagaway.store.base import OutboxStore
from sagaway.testing import VirtualClock
from sagaway.transport.base import Command, Reply, TransportError
from sagaway.transport.stub import StubDispatcher

FAST = RetryPolicy(max_attempts=2, initial_delay=0, jitter=0)
TIMEOUT = 5.0


class Order(BaseModel):
    id: str
    qty: int
    amount: int


class Reservation(BaseModel):
    reservation_id: str
    qty: int


def build_saga(name: str) -> Saga:
    """reserve (remote) -> audit (local) -> charge (remote), both remote steps compensatable."""
    saga = Saga(name)

    @saga.remote(
        "inventory",
        "reserve",
        reply=Reservation,
        compensation="release",
        timeout=TIMEOUT,
        retry=FAST,
        compensation_retry=FAST,
    )
    def reserve(ctx: StepContext, order: Order) -> dict[str, Any]:
        return {"order": order.id, "qty": order.qty}

    @saga.step
    async def audit(ctx: StepContext, order: Order) -> str:
        reservation = ctx.results["reserve"]
        assert isinstance(reservation, Reservation)  # decoded with reply=
        return f"audited {reservation.reservation_id}"

    @saga.remote(
        "payment",
        "charge",
        compensation="refund",
        timeout=TIMEOUT,
        retry=FAST,
        compensation_retry=FAST,
    )
    async def charge(ctx: StepContext, order: Order) -> dict[str, Any]:
        return {"order": order.id, "amount": order.amount}

    @charge.compensation_payload
    def refund_payload(ctx: StepContext, order: Order, output: Any) -> dict[str, Any]:
        return {"charge": output, "amount": order.amount}

    return saga


class Participants:
    """Inventory and payment with an inbox: an effect per message id, applied once."""

    def __init__(self, stub: StubDispatcher) -> None:
        self.effects: dict[str, Command] = {}  # message_id -> the command applied
        self.refuse: set[str] = set()  # topics answering a business failure
        self.payloads: dict[str, Any] = {}
        for topic in ("inventory.reserve", "inventory.release", "payment.charge", "payment.refund"):
            stub.register(topic, self._handler(topic))

    def _handler(self, topic: str) -> Callable[[Command], Any]:
        def handle(command: Command) -> Any:
            self.payloads[topic] = command.payload
            if topic in self.refuse:
                raise StepFailed(f"{topic} refused")
            self.effects.setdefault(command.message_id, command)
            if topic == "inventory.reserve":
                return {"reservation_id": f"r-{command.saga_id[-4:]}", "qty": 2}
            if topic == "payment.charge":
                return {"charge_id": "c-1"}
            return None

        return handle

    def applied(self, topic: str) -> int:
        return sum(1 for c in self.effects.values() if c.topic == topic)


ORDER = Order(id="o-1", qty=2, amount=1500)


def events(record: SagaRecord, type_: EventType, step: str | None = None) -> int:
    return sum(1 for e in record.history if e.type is type_ and (step is None or e.step == step))


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


# -- message transports: parked sagas ----------------------------------------------------------


class ParkWatch(Hook):
    """Records on_park / on_resume; ``parked`` is set each time a saga parks."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.parked = asyncio.Event()

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self.log.append(("park", reason))
        self.parked.set()

    def on_resume(self, record: SagaRecord, reason: str) -> None:
        self.log.append(("resume", reason))


class Parked:
    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.stub = StubDispatcher(parks=True)
        self.participants = Participants(self.stub)
        self.clock = VirtualClock(auto_advance=False)
        self.store: SagaStore = open_store(store_url)
        self.saga = build_saga(f"remote-parked-{id(self)}")
        self.watch = ParkWatch()

    def engine(self, owner: str = "e1", store: SagaStore | None = None) -> Engine:
        return Engine(
            store or self.store,
            sagas=[self.saga],
            owner_id=owner,
            clock=self.clock,
            transport=self.stub,
            recovery_interval=3600,
            lease_seconds=30,
            hooks=[self.watch],
        )


@pytest.fixture(params=["memory", "sqlite"])
def parked(request: pytest.FixtureRequest, tmp_path: Path) -> Parked:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    return Parked(url)


async def test_parked_happy_path_holds_no_lease_while_waiting(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        waiting = await parked.store.load(saga_id, history=False)
        assert waiting is not None
        assert waiting.waiting_for == "reply:inventory.reserve"
        assert waiting.parked_until == parked.clock.now() + TIMEOUT
        assert waiting.owner is None, "a parked saga holds no lease"
        assert engine.running == 0, "and no task"
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        record = await engine.wait(saga_id, timeout=5)
        assert isinstance(parked.store, OutboxStore)
        assert await parked.store.outbox_count() == 0, "the relay deleted what it published"
    assert record.status is SagaStatus.SUCCEEDED
    assert record.waiting_for is None
    assert record.output("reserve") == Reservation(reservation_id=f"r-{saga_id[-4:]}", qty=2)
    assert parked.participants.applied("inventory.reserve") == 1


async def test_parked_business_failure_compensates_remote_steps_in_reverse(
    parked: Parked,
) -> None:
    parked.participants.refuse.add("payment.charge")
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        await parked.stub.answer_next("inventory.reserve")
        await parked.stub.answer_next("payment.charge")
        release = await parked.stub.next_command()
        assert release.topic == "inventory.release"
        assert release.forward_key == f"{saga_id}:reserve:forward"
        await parked.stub.answer(release)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "payment.charge refused"
    assert [c.topic for c in parked.stub.calls] == [
        "inventory.reserve",
        "payment.charge",
        "inventory.release",
    ]


async def test_duplicate_reply_is_applied_once(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        reply = await parked.stub.run_handler(reserve)
        assert await engine.deliver(reply) is True
        charge = await parked.stub.next_command("payment.charge")  # moved on, parked again
        assert await engine.deliver(reply) is False, "a duplicate is stale"
        await parked.stub.answer(charge)
        record = await engine.get((await engine.wait(saga_id, timeout=5)).id)
    assert record.status is SagaStatus.SUCCEEDED
    assert events(record, EventType.STEP_SUCCEEDED, "reserve") == 1
    assert [c.topic for c in parked.stub.calls] == ["inventory.reserve", "payment.charge"]


async def test_stale_and_reordered_replies_are_ignored(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        # A reply for a step not in flight (charge has not been sent yet) changes nothing.
        early = Reply(
            f"{saga_id}:charge:forward",
            saga_id,
            "charge",
            Phase.FORWARD,
            1,
            "payment",
            True,
            {"charge_id": "x"},
        )
        assert await engine.deliver(early) is False
        # A compensation reply while the step goes forward: stale too.
        wrong_phase = Reply(
            f"{saga_id}:reserve:compensation",
            saga_id,
            "reserve",
            Phase.COMPENSATION,
            1,
            "inventory",
            True,
        )
        assert await engine.deliver(wrong_phase) is False
        still = await parked.store.load(saga_id, history=False)
        assert still is not None
        assert still.waiting_for == "reply:inventory.reserve"
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED


async def test_lost_reply_is_resent_with_the_same_key_then_compensated_as_uncertain(
    parked: Parked,
) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        first = await parked.stub.next_command("inventory.reserve")
        parked.clock.advance(TIMEOUT - 1)
        assert await engine.recover() == 0, "not before parked_until"
        parked.clock.advance(1)
        assert await engine.recover() == 1
        second = await parked.stub.next_command("inventory.reserve")
        assert (second.message_id, second.attempt) == (first.message_id, 2)
        # The participant did apply it this time, but the reply is lost as well.
        await parked.stub.run_handler(second)
        parked.clock.advance(TIMEOUT)
        assert await engine.recover() == 1
        release = await parked.stub.next_command()
        assert release.topic == "inventory.release", "attempts spent: uncertain, compensated"
        assert release.forward_key == first.message_id
        await parked.stub.answer(release)
        record = await engine.get((await engine.wait(saga_id, timeout=5)).id)
    assert parked.watch.log == [
        ("park", "reply:inventory.reserve"),
        ("resume", "timeout:reply:inventory.reserve"),
        ("park", "reply:inventory.reserve"),
        ("resume", "timeout:reply:inventory.reserve"),
        ("park", "reply:inventory.release"),
        ("resume", "reply:inventory.release"),
    ]
    assert record.status is SagaStatus.COMPENSATED
    row = record.step("reserve")
    assert row is not None
    assert row.status is StepStatus.FAILED
    assert row.uncertain
    assert events(record, EventType.STEP_RETRYING, "reserve") == 1


async def test_engine_restart_while_parked_picks_up_the_reply(parked: Parked) -> None:
    store_b: SagaStore | None = None
    first = parked.engine("e1")
    await first.open()
    saga_id = await first.start(parked.saga, ORDER)
    reserve = await parked.stub.next_command("inventory.reserve")
    if parked.store_url.startswith("sqlite"):
        await first.close()  # closes the store: the next engine opens the file again
        store_b = open_store(parked.store_url)
    else:
        await first.close()
        store_b = parked.store  # memory: the same object plays the surviving database
        await store_b.open()
    async with parked.engine("e2", store=store_b) as second:
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        record = await second.get((await second.wait(saga_id, timeout=5)).id)
    assert record.status is SagaStatus.SUCCEEDED
    started = [e.detail for e in record.history if e.type is EventType.STEP_STARTED]
    assert started == ["e1", "e2", "e2"], "e2 took over with the reply and drove it on"


async def test_relay_republishes_after_a_crash_between_commit_and_publish(
    parked: Parked,
) -> None:
    parked.stub.fail_publish = 1  # the fast path's publish is lost
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        await asyncio.wait_for(parked.watch.parked.wait(), 5)
        assert isinstance(parked.store, OutboxStore)
        assert await parked.store.outbox_count() == 1
        assert parked.stub.pending == []
        assert await engine.relay_outbox() == 0, "too young: its own run may still send it"
        parked.clock.advance(3)
        assert await engine.relay_outbox() == 1
        assert await parked.store.outbox_count() == 0
        await parked.stub.answer_next("inventory.reserve")
        await parked.stub.answer_next("payment.charge")
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED


async def test_cancel_while_parked_compensates_the_step_in_flight(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await engine.cancel(saga_id)
        release = await parked.stub.next_command()
        assert release.topic == "inventory.release", "it may have run: compensated"
        assert await parked.stub.answer(reserve) is not None
        assert await engine.deliver(await parked.stub.run_handler(reserve)) is False, "stale"
        await parked.stub.answer(release)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"
    assert [c.topic for c in parked.stub.calls] == ["inventory.reserve", "inventory.release"]
