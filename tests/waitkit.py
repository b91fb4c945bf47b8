"""Scenarios of durable waits (signals, timeouts, sleeps) run on every saga store: the unit
tests run them on memory and SQLite, tests/integration/test_engine_remote_stores.py on
PostgreSQL and Redis. Time is a ``VirtualClock``: a three-day wait takes no time."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from sagaway import Engine, EventType, InvalidInput, Saga, SagaNotFound, SagaStatus, StepContext
from sagaway.errors import NotWaiting
from sagaway.hooks import Hook
from sagaway.state import SagaRecord
from sagaway.store import SagaStore, open_store
from sagaway.testing import VirtualClock

PAYMENT_TIMEOUT = 900.0
THREE_DAYS = 3 * 86400.0


class Order(BaseModel):
    id: str
    amount: int


class Confirmation(BaseModel):
    payment_id: str
    by: str


ORDER = Order(id="o-1", amount=1500)


class Watch(Hook):
    """``parked`` is set each time a saga parks (the run that parked it has committed)."""

    def __init__(self) -> None:
        self.parked = asyncio.Event()
        self.log: list[tuple[str, str]] = []

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self.log.append(("park", reason))
        self.parked.set()

    def on_resume(self, record: SagaRecord, reason: str) -> None:
        self.log.append(("resume", reason))


class Waits:
    """One store, a virtual clock, sagas with waits, and a count of every effect."""

    def __init__(self, store_url: str) -> None:
        self.store_url = store_url
        self.clock = VirtualClock(auto_advance=False)
        self.store: SagaStore = open_store(store_url)
        self.watch = Watch()
        self.effects: Counter[str] = Counter()
        tag = f"{id(self)}"
        effects = self.effects

        self.checkout = Saga(f"wait-checkout-{tag}")

        @self.checkout.step
        async def reserve(ctx: StepContext, order: Order) -> str:
            effects[f"reserve:{ctx.saga_id}"] += 1
            return f"r-{order.id}"

        @reserve.compensation
        async def release(ctx: StepContext, order: Order, reservation: str) -> None:
            effects[f"release:{ctx.saga_id}"] += 1

        self.checkout.wait("payment_confirmed", timeout=PAYMENT_TIMEOUT, reply=Confirmation)

        @self.checkout.step(kind="pivot")
        async def ship(ctx: StepContext, order: Order) -> str:
            effects[f"ship:{ctx.saga_id}"] += 1
            confirmed = ctx.results["payment_confirmed"]
            assert isinstance(confirmed, Confirmation)
            return f"shipped {order.id} paid by {confirmed.by}"

        self.defaulted = Saga(f"wait-default-{tag}")
        self.defaulted.wait(
            "approval", timeout=lambda ctx, order: order["amount"] / 10, default={"approved": True}
        )

        @self.defaulted.step
        async def after(ctx: StepContext, order: dict[str, object]) -> object:
            return ctx.results["approval"]

        self.sleeper = Saga(f"wait-sleep-{tag}")

        @self.sleeper.step
        async def before(ctx: StepContext, order: Order) -> None:
            effects[f"before:{ctx.saga_id}"] += 1

        self.sleeper.sleep("cool_off", seconds=THREE_DAYS)

        @self.sleeper.step
        async def wake(ctx: StepContext, order: Order) -> None:
            effects[f"wake:{ctx.saga_id}"] += 1

        self.until = Saga(f"wait-until-{tag}")
        self.until.sleep("until_noon", until=lambda ctx, order: self.noon)

        @self.until.step
        async def done(ctx: StepContext, order: Order) -> None:
            effects[f"done:{ctx.saga_id}"] += 1

        self.noon = datetime.fromtimestamp(self.clock.now() + 3600, UTC)

    @property
    def sagas(self) -> list[Saga]:
        return [self.checkout, self.defaulted, self.sleeper, self.until]

    def engine(self, owner: str = "e1", *, execute: bool = True) -> Engine:
        return Engine(
            self.store,
            sagas=self.sagas,
            owner_id=owner,
            clock=self.clock,
            recovery_interval=3600,  # recovery passes only when the test runs one
            lease_seconds=30,
            execute=execute,
            hooks=[self.watch],
        )

    def restart(self) -> None:
        """A new process's store on the same database (a memory store lives on in this one)."""
        if not self.store_url.startswith("memory"):
            self.store = open_store(self.store_url)

    async def parked(self) -> None:
        await asyncio.wait_for(self.watch.parked.wait(), 5)
        self.watch.parked.clear()


async def check_signal_resumes_the_wait_and_a_duplicate_changes_nothing(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        waiting = await kit.store.get(saga_id, history=False)
        assert waiting.waiting_for == "signal:payment_confirmed"
        assert waiting.parked_until == kit.clock.now() + PAYMENT_TIMEOUT
        assert waiting.owner is None, "a waiting saga holds no lease"
        assert engine.running == 0, "and no task"
        page = await engine.list_waiting("signal:payment_confirmed")
        assert [s.id for s in page.items] == [saga_id]
        payload = {"payment_id": "p-1", "by": "alice"}
        receipt = await engine.signal(saga_id, "payment_confirmed", payload, signal_id="s-1")
        assert not receipt.duplicate
        record = await engine.wait(saga_id, timeout=5)
        again = await engine.signal(saga_id, "payment_confirmed", payload, signal_id="s-1")
        assert again.duplicate, "the same signal id again: the effect of once"
        with pytest.raises(NotWaiting, match="SUCCEEDED"):
            await engine.signal(saga_id, "payment_confirmed", payload, signal_id="s-2")
        full = await engine.get(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.waiting_for is None
    assert record.output("payment_confirmed") == Confirmation(payment_id="p-1", by="alice")
    assert record.output("ship") == "shipped o-1 paid by alice"
    assert kit.effects[f"ship:{saga_id}"] == 1
    received = [e for e in full.history if e.type is EventType.SIGNAL_RECEIVED]
    assert [e.detail for e in received] == ["payment_confirmed s-1"]
    assert ("resume", "signal:payment_confirmed") in kit.watch.log


async def check_timeout_compensates_like_a_failure(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        kit.clock.advance(PAYMENT_TIMEOUT - 1)
        await engine.recover()
        assert engine.running == 0, "not due yet: nobody claims it"
        kit.clock.advance(1)
        await engine.recover()  # (or the maintainer's pass, woken by the store)
        record = await engine.wait(saga_id, timeout=5)
        with pytest.raises(NotWaiting, match="COMPENSATED"):
            await engine.signal(saga_id, "payment_confirmed", {"payment_id": "p", "by": "late"})
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "timed out waiting for signal 'payment_confirmed'"
    assert kit.effects[f"release:{saga_id}"] == 1
    assert kit.effects[f"ship:{saga_id}"] == 0


async def check_signal_with_an_error_compensates(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        await engine.signal(saga_id, "payment_confirmed", error="cancelled by the customer")
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "signal payment_confirmed: cancelled by the customer"
    assert kit.effects[f"release:{saga_id}"] == 1


async def check_wrong_signals_are_refused_and_nothing_is_recorded(kit: Waits) -> None:
    async with kit.engine() as engine:
        with pytest.raises(SagaNotFound):
            await engine.signal("nope", "payment_confirmed")
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        with pytest.raises(NotWaiting, match="waits for signal:payment_confirmed") as info:
            await engine.signal(saga_id, "payment_cancelled")
        assert info.value.waiting_for == "signal:payment_confirmed"
        with pytest.raises(InvalidInput, match="by"):
            await engine.signal(saga_id, "payment_confirmed", {"payment_id": "p-1"})
        sleeping = await engine.start(kit.sleeper, ORDER)
        await kit.parked()
        with pytest.raises(NotWaiting, match="waits for timer"):
            await engine.signal(sleeping, "payment_confirmed")
        record = await engine.get(saga_id)
    assert record.waiting_for == "signal:payment_confirmed", "still waiting, nothing recorded"
    assert not [e for e in record.history if e.type is EventType.SIGNAL_RECEIVED]


async def check_three_day_sleep_survives_a_restart(kit: Waits) -> None:
    async with kit.engine("e1") as engine:
        saga_id = await engine.start(kit.sleeper, ORDER)
        await kit.parked()
        waiting = await kit.store.get(saga_id, history=False)
        assert waiting.waiting_for == "timer"
        assert waiting.parked_until == kit.clock.now() + THREE_DAYS
    kit.clock.advance(THREE_DAYS - 60)
    kit.restart()
    async with kit.engine("e2") as engine:  # a new engine, 2 days 23h59 later
        await engine.recover()
        assert engine.running == 0, "not due yet"
        assert (await kit.store.get(saga_id, history=False)).waiting_for == "timer"
        kit.clock.advance(60)
        await engine.recover()
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.effects[f"before:{saga_id}"] == 1
    assert kit.effects[f"wake:{saga_id}"] == 1


async def check_sleep_until_a_datetime(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.until, ORDER.model_dump())
        await kit.parked()
        waiting = await kit.store.get(saga_id, history=False)
        assert waiting.parked_until == kit.noon.timestamp()
        kit.clock.advance(3600)
        await engine.recover()
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.effects[f"done:{saga_id}"] == 1


async def check_timeout_takes_the_declared_default(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.defaulted, {"id": "o-2", "amount": 600})
        await kit.parked()
        waiting = await kit.store.get(saga_id, history=False)
        assert waiting.parked_until == kit.clock.now() + 60, "timeout computed from the input"
        kit.clock.advance(60)
        await engine.recover()
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("after") == {"approved": True}


async def check_signal_through_an_api_only_engine_is_applied_by_the_worker(kit: Waits) -> None:
    async with kit.engine("worker") as worker:
        saga_id = await worker.start(kit.checkout, ORDER)
        await kit.parked()
        # An API-only engine (the CLI, a web process) on the same store. Not closed: it
        # shares the worker's store object (a memory store exists once).
        api = await kit.engine("api", execute=False).open()
        try:
            payload = {"payment_id": "p-9", "by": "bob"}
            receipt = await api.signal(saga_id, "payment_confirmed", payload, signal_id="w-1")
            assert not receipt.duplicate
            recorded = await kit.store.get(saga_id, history=False)
            assert recorded.waiting_for == "signal:payment_confirmed", "recorded, not applied"
            assert recorded.parked_until == kit.clock.now(), "due now: the worker's next pass"
            assert (
                await api.signal(saga_id, "payment_confirmed", payload, signal_id="w-1")
            ).duplicate
            # Another id: refused ("already received", or, once the worker applied the first,
            # not waiting any more, or finished: a store may wake the worker meanwhile, as
            # Redis does once its listener has subscribed).
            with pytest.raises(NotWaiting, match=r"payment_confirmed|waits for nothing"):
                await api.signal(saga_id, "payment_confirmed", payload, signal_id="w-2")
        finally:
            api.store = open_store("memory://")  # so that closing it leaves the shared one
            await api.close()
        await worker.recover()
        record = await worker.wait(saga_id, timeout=5)
        full = await worker.get(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("ship") == "shipped o-1 paid by bob"
    assert kit.effects[f"ship:{saga_id}"] == 1
    assert [e.detail for e in full.history if e.type is EventType.SIGNAL_RECEIVED] == [
        "payment_confirmed w-1"
    ]


async def check_cancel_while_waiting_compensates(kit: Waits) -> None:
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        await engine.cancel(saga_id)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"
    assert kit.effects[f"release:{saga_id}"] == 1


async def check_cancel_through_an_api_only_engine_wakes_the_wait(kit: Waits) -> None:
    async with kit.engine("worker") as worker:
        saga_id = await worker.start(kit.checkout, ORDER)
        await kit.parked()
        api = await kit.engine("api", execute=False).open()
        try:
            await api.cancel(saga_id)
        finally:
            api.store = open_store("memory://")  # so that closing it leaves the shared one
            await api.close()
        due = await kit.store.get(saga_id, history=False)
        assert due.parked_until == kit.clock.now(), "due now, not in 900 s"
        await worker.recover()
        record = await worker.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"
    assert kit.effects[f"release:{saga_id}"] == 1


ALL = [
    check_cancel_through_an_api_only_engine_wakes_the_wait,
    check_signal_resumes_the_wait_and_a_duplicate_changes_nothing,
    check_timeout_compensates_like_a_failure,
    check_signal_with_an_error_compensates,
    check_wrong_signals_are_refused_and_nothing_is_recorded,
    check_three_day_sleep_survives_a_restart,
    check_sleep_until_a_datetime,
    check_timeout_takes_the_declared_default,
    check_signal_through_an_api_only_engine_is_applied_by_the_worker,
    check_cancel_while_waiting_compensates,
]
