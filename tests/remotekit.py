"""Remote-step scenarios on a parking (message) transport, run by the unit tests on the memory
and SQLite stores and by the integration tests on PostgreSQL and Redis: the stub dispatcher
plays the broker and the participants, the virtual clock plays time."""

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.hooks import Hook
from sagaway.state import ACTIVE_STATUSES, Change, EventType, Phase, SagaRecord, StepStatus
from sagaway.store import SagaStore, open_store
from sagaway.store.base import OutboxStore, TakingStore
from sagaway.testing import VirtualClock
from sagaway.transport.base import Command, Reply
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

    async def settled(self) -> None:
        """Wait until the run that sent the last command has parked the saga and ended (its
        relay deletes the message after publishing it, so the command is seen first)."""
        await asyncio.wait_for(self.watch.parked.wait(), 5)
        self.watch.parked.clear()

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


async def check_parked_happy_path_holds_no_lease_while_waiting(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        waiting = await parked.store.load(saga_id, history=False)
        assert waiting is not None
        assert waiting.waiting_for == "reply:inventory.reserve"
        assert waiting.parked_until == parked.clock.now() + TIMEOUT
        assert waiting.owner is None, "a parked saga holds no lease"
        assert engine.running == 0, "and no task"
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        record = await engine.wait(saga_id, timeout=5)
        await engine.flush_outbox()
        assert isinstance(parked.store, OutboxStore)
        assert await parked.store.outbox_count() == 0, "the relay deleted what it published"
    assert record.status is SagaStatus.SUCCEEDED
    assert record.waiting_for is None
    assert record.output("reserve") == Reservation(reservation_id=f"r-{saga_id[-4:]}", qty=2)
    assert parked.participants.applied("inventory.reserve") == 1


async def check_parked_business_failure_compensates_remote_steps_in_reverse(
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


async def check_duplicate_reply_is_applied_once(parked: Parked) -> None:
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


async def check_a_reply_whose_take_lost_reads_again(parked: Parked) -> None:
    """Between the engine's read of the parked saga and its write, another engine took the
    saga and gave it back (a stale reply of its own, say): the write's take finds the row
    written and writes nothing; the engine reads the saga again, still parked and free, and
    applies the reply, rather than dropping it until the park times out."""
    store = parked.store
    assert isinstance(store, TakingStore)
    real_peek = store.peek
    meddled: list[str] = []

    async def peek_then_meddle(saga_id: str) -> SagaRecord | None:
        read = await real_peek(saga_id)
        if not meddled:
            meddled.append(saga_id)
            now = parked.clock.now()
            other = await store.acquire(
                saga_id, "other", now=now, lease_seconds=30, statuses=ACTIVE_STATUSES
            )
            assert other is not None
            await store.commit(saga_id, "other", Change(release_lease=True), now)
        return read

    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        reply = await parked.stub.run_handler(reserve)
        store.peek = peek_then_meddle  # type: ignore[method-assign]
        try:
            assert await engine.deliver(reply) is True
        finally:
            store.peek = real_peek  # type: ignore[method-assign]
        assert meddled == [saga_id]
        await parked.stub.answer_next("payment.charge")
        record = await engine.get((await engine.wait(saga_id, timeout=5)).id)
    assert record.status is SagaStatus.SUCCEEDED
    assert events(record, EventType.STEP_SUCCEEDED, "reserve") == 1


async def check_stale_and_reordered_replies_are_ignored(parked: Parked) -> None:
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


async def check_lost_reply_is_resent_with_the_same_key_then_compensated(
    parked: Parked,
) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        first = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        parked.clock.advance(TIMEOUT - 1)
        assert await engine.recover() == 0, "not before parked_until"
        parked.clock.advance(1)
        assert await engine.recover() == 1
        second = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
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


async def check_engine_restart_while_parked_picks_up_the_reply(parked: Parked) -> None:
    first = parked.engine("e1")
    await first.open()
    saga_id = await first.start(parked.saga, ORDER)
    reserve = await parked.stub.next_command("inventory.reserve")
    await parked.settled()
    await first.close()  # closes its store too
    if parked.store_url.startswith("memory"):
        store_b = parked.store  # the same object plays the surviving database
        await store_b.open()
    else:  # a new process: a new connection to the same database
        store_b = open_store(parked.store_url)
        parked.store = store_b
    async with parked.engine("e2", store=store_b) as second:
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        record = await second.get((await second.wait(saga_id, timeout=5)).id)
    assert record.status is SagaStatus.SUCCEEDED
    started = [e.detail for e in record.history if e.type is EventType.STEP_STARTED]
    assert started == ["e1", "e2", "e2"], "e2 took over with the reply and drove it on"


async def check_relay_republishes_after_a_crash_between_commit_and_publish(
    parked: Parked,
) -> None:
    parked.stub.fail_publish = 1  # the fast path's publish is lost
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        await parked.settled()
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


async def check_cancel_while_parked_compensates_the_step_in_flight(parked: Parked) -> None:
    async with parked.engine() as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
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


class Stamp(Hook):
    def before_dispatch(self, record: SagaRecord, command: Command) -> None:
        command.headers["x-stamp"] = f"{record.id}/{command.step}/{command.attempt}"


async def check_before_dispatch_headers_travel_with_the_command(parked: Parked) -> None:
    engine = parked.engine()
    engine.add_hook(Stamp())
    async with engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        assert reserve.headers["x-stamp"] == f"{saga_id}/reserve/1"
        assert parked.stub.published[0].headers["x-stamp"] == f"{saga_id}/reserve/1"
        await parked.stub.answer(reserve)
        await parked.stub.answer_next("payment.charge")
        assert (await engine.wait(saga_id, timeout=5)).status is SagaStatus.SUCCEEDED
