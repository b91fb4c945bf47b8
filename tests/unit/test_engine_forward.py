"""Forward execution: order, the write-ahead protocol, what a step sees, what the log keeps."""

from typing import Any

from pydantic import BaseModel
from sagakit import Kit, Order, Receipt

from sagaway import (
    Change,
    EventType,
    Phase,
    Saga,
    SagaRecord,
    SagaStatus,
    StepContext,
    StepStatus,
)
from sagaway.state import NewSaga
from sagaway.store.memory import MemoryStore
from sagaway.testing import saga_engine

S, F = StepStatus, EventType


class JournalStore(MemoryStore):
    """Journals every durable write (step rows it carries), so a test can interleave them with
    the actions the steps ran and check the write-ahead order."""

    def __init__(self, journal: list[Any]) -> None:
        super().__init__()
        self.journal = journal

    async def create(self, new: NewSaga) -> tuple[str, bool]:
        self.journal.append(("write", [(s.name, s.phase.value, s.status) for s in new.steps]))
        return await super().create(new)

    async def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        rows = [(s.name, s.phase.value, s.status) for s in change.steps]
        self.journal.append(("write", rows, change.status))
        await super().commit(saga_id, owner, change, at)


async def test_steps_run_in_declared_order_and_the_saga_succeeds(kit: Kit, order: Order) -> None:
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.error is None
    assert kit.trace == ["do:a", "do:b", "do:c"]
    assert [record.step(n).status for n in "abc"] == [S.SUCCEEDED] * 3  # type: ignore[union-attr]
    assert record.owner is None, "a terminal saga hands its lease back"


async def test_each_step_is_durably_running_before_its_action_and_earlier_outcomes_are_durable(
    order: Order,
) -> None:
    """Inside each action, read the *store* (not the engine's memory): the step's own RUNNING
    row must already be there, every earlier step's outcome too, and no later step's row."""
    store = MemoryStore()
    seen: dict[str, SagaRecord] = {}
    saga = Saga("wal")

    async def look(ctx: StepContext) -> None:
        seen[ctx.step] = await store.get(ctx.saga_id)

    @saga.step
    async def first(ctx: StepContext, o: Order) -> int:
        await look(ctx)
        return 1

    @saga.step
    async def second(ctx: StepContext, o: Order) -> int:
        await look(ctx)
        return 2

    @saga.step
    async def third(ctx: StepContext, o: Order) -> int:
        await look(ctx)
        return 3

    async with saga_engine(saga, store=store) as h:
        await h.run(saga, order)
    names = ["first", "second", "third"]
    for i, name in enumerate(names):
        rec = seen[name]
        own = rec.step(name)
        assert own is not None
        assert own.status is S.RUNNING
        assert own.attempts == 1
        for j, earlier in enumerate(names[:i]):
            row = rec.step(earlier)
            assert row is not None
            assert row.status is S.SUCCEEDED
            assert row.output == j + 1
        for later in names[i + 1 :]:
            assert rec.step(later) is None


async def test_write_ahead_journal_interleaves_each_outcome_with_the_next_start(
    order: Order,
) -> None:
    """The exact order of durable writes and actions: an action never runs before the write
    that records it RUNNING, and the next step's RUNNING row carries the previous outcome."""
    journal: list[Any] = []
    kit = Kit(steps=("a", "b"), trace=journal)  # actions log "do:<step>" into the journal
    kit.faults.reject("b", "no stock")
    async with saga_engine(kit.saga, store=JournalStore(journal)) as h:
        await h.run(kit.saga, order)
    fw, cp = "forward", "compensation"
    assert journal == [
        ("write", [("a", fw, S.RUNNING)]),
        "do:a",
        ("write", [("a", fw, S.SUCCEEDED), ("b", fw, S.RUNNING)], None),
        # b raises StepFailed before its body runs: its failure and a's compensation start
        # are one write, and a's compensation runs only after it.
        ("write", [("b", fw, S.FAILED), ("a", cp, S.COMPENSATING)], SagaStatus.COMPENSATING),
        "undo:a",
        ("write", [("a", cp, S.COMPENSATED)], SagaStatus.COMPENSATED),
    ]


async def test_step_context_carries_identity_keys_and_decoded_earlier_results(
    kit: Kit, order: Order
) -> None:
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await h.wait(saga_id)
    results_seen = kit.results_seen
    for ctx, name in zip(kit.contexts, "abc", strict=True):
        assert ctx.saga_id == saga_id
        assert ctx.saga_name == "order"
        assert ctx.step == name
        assert ctx.phase is Phase.FORWARD
        assert not ctx.is_compensation
        assert ctx.attempt == 1
        assert ctx.idempotency_key == f"{saga_id}:{name}:forward"
        assert ctx.forward_key == ctx.idempotency_key
    assert results_seen[0] == {}
    assert list(results_seen[2]) == ["a", "b"]
    receipt = results_seen[2]["a"]
    assert isinstance(receipt, Receipt), "earlier outputs come back as their Pydantic type"
    assert receipt == Receipt(step="a", key=f"{saga_id}:a:forward", amount=50)


async def test_compensation_context_has_its_own_key_and_the_actions_forward_key(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "declined")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await h.wait(saga_id)
    ctx, given_order, receipt = kit.undo_args[0]
    assert ctx.step == "b"
    assert ctx.phase is Phase.COMPENSATION
    assert ctx.is_compensation
    assert ctx.idempotency_key == f"{saga_id}:b:compensation"
    assert ctx.forward_key == f"{saga_id}:b:forward"
    assert ctx.attempt == 1
    assert given_order == order
    assert receipt == Receipt(step="b", key=ctx.forward_key, amount=50)
    assert isinstance(receipt, Receipt)


class Cart(BaseModel):
    items: list[str]
    total_cents: int


class Quote(BaseModel):
    cart: Cart
    tax_cents: int


async def test_pydantic_inputs_and_outputs_round_trip_through_the_log() -> None:
    saga = Saga("quote")
    got: list[Any] = []

    @saga.step
    async def price(ctx: StepContext, cart: Cart) -> Quote:
        got.append(cart)
        return Quote(cart=cart, tax_cents=cart.total_cents // 10)

    @saga.step
    async def confirm(ctx: StepContext, cart: Cart) -> dict[str, int]:
        quote = ctx.results["price"]
        got.append(quote)
        return {"total": quote.cart.total_cents + quote.tax_cents}

    cart = Cart(items=["x", "y"], total_cents=1000)
    async with saga_engine(saga) as h:
        record = await h.run(saga, cart)
        # A plain dict is accepted as the encoded input and validated against the model.
        from_dict = await h.run(saga, {"items": [], "total_cents": 10})
    assert record.input == {"items": ["x", "y"], "total_cents": 1000}, "stored as JSON"
    assert record.raw_output("price") == {"cart": record.input, "tax_cents": 100}
    # Read through the engine, a step's output is its declared type, not the JSON.
    assert record.output("price") == Quote(cart=cart, tax_cents=100)
    assert isinstance(record.output("price"), Quote)
    assert record.output("confirm") == {"total": 1100}
    assert got[0] == cart
    assert isinstance(got[0], Cart)
    assert isinstance(got[1], Quote)
    assert got[1].cart == cart
    assert from_dict.status is SagaStatus.SUCCEEDED
    assert isinstance(got[2], Cart)


async def test_steps_taking_the_input_as_different_types_each_get_their_own() -> None:
    """A run decodes the input once per type its steps take it as (one object a type)."""
    saga = Saga("two-types")
    got: list[Any] = []

    @saga.step
    async def price(ctx: StepContext, cart: Cart) -> None:
        got.append(cart)

    @saga.step
    async def count(ctx: StepContext, data: dict[str, Any]) -> None:
        got.append(data)

    @saga.step
    async def confirm(ctx: StepContext, cart: Cart) -> None:
        got.append(cart)

    async with saga_engine(saga) as h:
        record = await h.run(saga, Cart(items=["x"], total_cents=5))
    assert record.status is SagaStatus.SUCCEEDED
    assert isinstance(got[0], Cart)
    assert got[1] == {"items": ["x"], "total_cents": 5}
    assert got[2] is got[0], "decoded once for the two steps that take it as a Cart"


async def test_plain_json_steps_need_no_models(order: Order) -> None:
    saga = Saga("plain")

    @saga.step
    async def add(ctx: StepContext, data: dict[str, Any]) -> list[int]:
        return [data["x"], data["x"] + 1]

    @saga.step
    async def total(ctx: StepContext, data: Any) -> int:
        return int(sum(ctx.results["add"]))

    async with saga_engine(saga) as h:
        record = await h.run(saga, {"x": 20})
    assert record.output("add") == [20, 21]
    assert record.output("total") == 41


async def test_step_rows_record_attempts_output_error_and_times(kit: Kit, order: Order) -> None:
    kit.faults.fail("b", times=2, exc=ConnectionError("reset by peer"))
    async with saga_engine(kit.saga) as h:
        start = h.clock.now()
        record = await h.run(kit.saga, order)
    b = record.step("b")
    assert b is not None
    assert b.status is S.SUCCEEDED
    assert b.attempts == 3
    assert b.output == {"step": "b", "key": f"{record.id}:b:forward", "amount": 50}
    assert b.error is None, "a success clears the last attempt's error"
    assert b.started_at == start
    assert b.finished_at is not None
    assert b.finished_at >= start
    a = record.step("a")
    assert a is not None
    assert a.attempts == 1
    assert a.started_at is not None


async def test_history_is_the_ordered_timeline_of_every_transition(kit: Kit, order: Order) -> None:
    kit.faults.fail("b", times=1).reject("c", "declined")
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    timeline = [(e.type, e.step, e.attempt) for e in record.history]
    assert timeline == [
        (F.SAGA_STARTED, None, None),
        (F.STEP_STARTED, "a", 1),
        (F.STEP_SUCCEEDED, "a", 1),
        (F.STEP_STARTED, "b", 1),
        (F.STEP_RETRYING, "b", 1),
        (F.STEP_STARTED, "b", 2),
        (F.STEP_SUCCEEDED, "b", 2),
        (F.STEP_STARTED, "c", 1),
        (F.STEP_FAILED, "c", 1),
        (F.COMPENSATION_STARTED, "b", 1),
        (F.STEP_COMPENSATED, "b", 1),
        (F.COMPENSATION_STARTED, "a", 1),
        (F.STEP_COMPENSATED, "a", 1),
        (F.SAGA_COMPENSATED, None, None),
    ]
    assert record.history[-1].detail == "declined"
    times = [e.at for e in record.history]
    assert times == sorted(times)


async def test_subscribers_see_every_durable_transition_after_it_is_committed(
    kit: Kit, order: Order
) -> None:
    seen: list[tuple[SagaStatus, list[str]]] = []
    async with saga_engine(kit.saga) as h:
        h.engine.subscribe(
            lambda rec, change: seen.append((rec.status, [s.name for s in change.steps]))
        )
        h.engine.subscribe(lambda rec, change: 1 / 0)  # a broken observer never breaks a saga
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    # The creating write is not a commit; the three later writes are.
    assert seen == [
        (SagaStatus.RUNNING, ["a", "b"]),
        (SagaStatus.RUNNING, ["b", "c"]),
        (SagaStatus.SUCCEEDED, ["c"]),
    ]


async def test_a_saga_driven_with_the_memory_stores_own_record_leaks_nothing_through_reads(
    kit: Kit, order: Order
) -> None:
    # The engine drives a saga it starts on the memory store with the record the store keeps
    # (``shares_records``): each change is applied once, by the store, and reads stay copies.
    store = MemoryStore()
    hang = kit.faults.hang("b")
    async with saga_engine(kit.saga, store=store) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        assert h.engine._runs[saga_id].record is store._sagas[saga_id]
        read = await store.get(saga_id)
        assert read is not store._sagas[saga_id]
        assert read.definition is None, "a bare store read knows no definition"
        read.steps.clear()
        read.history.clear()
        hang.release()
        record = await h.wait(saga_id)
        stored = await store.get(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert [record.step(n).status for n in "abc"] == [S.SUCCEEDED] * 3  # type: ignore[union-attr]
    assert record is not store._sagas[saga_id], "a waiter gets a copy"
    assert record.definition is kit.saga
    # Each event once: applied by the store, not again by the run.
    assert [e.type for e in stored.history] == [
        F.SAGA_STARTED,
        *[F.STEP_STARTED, F.STEP_SUCCEEDED] * 3,
        F.SAGA_SUCCEEDED,
    ]


async def test_a_finished_run_leaves_no_task_and_no_run_behind(kit: Kit, order: Order) -> None:
    # Each run drops its own task from the engine's set when it ends (no done callback).
    async with saga_engine(kit.saga) as h:
        for _ in range(3):
            await h.run(kit.saga, order)
        assert h.engine._tasks == set()
        assert h.engine._runs == {}


async def test_the_memory_stores_plain_writes_give_way_to_an_overridden_or_replaced_one(
    kit: Kit, order: Order
) -> None:
    # The engine calls the memory store's create and commit as plain calls (no coroutine a
    # write: ``SagaStore.inline_commit``); a subclass's or a replaced commit must still see
    # every write, as awaited.
    journal: list[Any] = []
    async with saga_engine(kit.saga, store=JournalStore(journal)) as h:
        assert h.engine.store.inline_commit is None
        assert h.engine.store.inline_create is None
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert len(journal) == 4, "the create and 3 transitions: each through the override"

    store = MemoryStore()
    assert store.inline_commit is not None
    assert store.inline_create is not None
    real_commit, real_create = store.commit, store.create
    seen: list[SagaStatus | None] = []

    async def spy_commit(saga_id: str, owner: str | None, change: Change, at: float) -> None:
        seen.append(change.status)
        await real_commit(saga_id, owner, change, at)

    async def spy_create(new: NewSaga) -> tuple[str, bool]:
        seen.append(new.status)
        return await real_create(new)

    store.commit = spy_commit  # type: ignore[method-assign]
    store.create = spy_create  # type: ignore[method-assign]
    assert store.inline_commit is None
    assert store.inline_create is None
    async with saga_engine(kit.saga, store=store) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert seen == [SagaStatus.RUNNING, None, None, SagaStatus.SUCCEEDED]
