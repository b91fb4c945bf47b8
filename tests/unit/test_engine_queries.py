"""Queries: one saga with steps and history; listings by status and name, newest first, paged."""

import asyncio

import pytest
from sagakit import Kit, Order

from sagaway import SagaNotFound, SagaStatus
from sagaway.testing import saga_engine


async def test_list_filters_by_status_and_name_newest_first_with_paging() -> None:
    orders, refunds = Kit("order"), Kit("refund")
    orders.faults.reject("b", "declined", when=lambda o: o.amount < 0)
    async with saga_engine(orders.saga, refunds.saga) as h:
        ids: dict[str, str] = {}
        for i, (kit, amount) in enumerate(
            [(orders, 1), (orders, -1), (refunds, 1), (orders, 2), (orders, -2)]
        ):
            h.clock.advance(1.0)  # distinct creation times: the listing order is deterministic
            ids[f"{kit.saga.name}{i}"] = await h.start(kit.saga, Order(id=str(i), amount=amount))
            await h.wait(ids[f"{kit.saga.name}{i}"])
        engine = h.engine

        everything = await engine.list_sagas()
        assert [r.id for r in everything.items] == list(reversed(ids.values()))
        assert everything.total == 5

        by_name = await engine.list_sagas(name="order")
        assert [r.id for r in by_name.items] == [
            ids[k] for k in ("order4", "order3", "order1", "order0")
        ]

        compensated = await engine.list_sagas(status=SagaStatus.COMPENSATED)
        assert [r.id for r in compensated.items] == [ids["order4"], ids["order1"]]
        assert compensated.total == 2

        both = await engine.list_sagas(status=SagaStatus.SUCCEEDED, name="order")
        assert [r.id for r in both.items] == [ids["order3"], ids["order0"]]

        page1 = await engine.list_sagas(limit=2)
        page2 = await engine.list_sagas(limit=2, offset=2)
        page3 = await engine.list_sagas(limit=2, offset=4)
        assert [len(p.items) for p in (page1, page2, page3)] == [2, 2, 1]
        assert {p.total for p in (page1, page2, page3)} == {5}
        seen = [r.id for p in (page1, page2, page3) for r in p.items]
        assert seen == [r.id for r in everything.items], "pages tile the listing exactly"

        assert (await engine.list_sagas(offset=10)).items == []
        assert (await engine.list_sagas(name="nothing")).total == 0
        assert await engine.store.counts() == {
            SagaStatus.SUCCEEDED: 3,
            SagaStatus.COMPENSATED: 2,
        }


async def test_listings_are_light_and_get_returns_steps_and_history(kit: Kit, order: Order) -> None:
    async with saga_engine(kit.saga) as h:
        saga_id = (await h.run(kit.saga, order)).id
        listed = (await h.engine.list_sagas()).items[0]
        full = await h.engine.get(saga_id)
    assert listed.id == saga_id
    assert listed.steps == {}
    assert listed.history == []
    assert set(full.steps) == {(n, "forward") for n in "abc"}
    assert len(full.history) == 8


async def test_records_handed_out_are_copies(kit: Kit, order: Order) -> None:
    async with saga_engine(kit.saga) as h:
        saga_id = (await h.run(kit.saga, order)).id
        first = await h.engine.get(saga_id)
        first.history.clear()
        first.steps.clear()
        first.status = SagaStatus.FAILED
        again = await h.engine.get(saga_id)
    assert again.status is SagaStatus.SUCCEEDED
    assert len(again.steps) == 3
    assert again.history


async def test_an_unknown_saga_id_raises_saga_not_found(kit: Kit) -> None:
    async with saga_engine(kit.saga) as h:
        with pytest.raises(SagaNotFound, match="'missing'"):
            await h.engine.get("missing")
        with pytest.raises(SagaNotFound):
            await h.engine.retry("missing")
        with pytest.raises(SagaNotFound):
            await h.engine.resume("missing")


async def test_wait_with_a_timeout_returns_the_unfinished_saga(kit: Kit, order: Order) -> None:
    hang = kit.faults.hang("a")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        record = await h.engine.wait(saga_id, timeout=0.01)
        assert record.status is SagaStatus.RUNNING
        assert not record.status.is_terminal
        assert h.engine.running == 1
        hang.release()
        done = await h.engine.wait(saga_id)
    assert done.status.is_terminal


async def test_a_wait_with_a_timeout_cancelled_or_timed_out_leaves_the_saga_running(
    kit: Kit, order: Order
) -> None:
    # Neither a wait's timeout nor its cancellation reaches the saga (its timer answers the
    # wait's own future); a wait answered first returns the finished saga, timeout or not.
    hang = kit.faults.hang("a")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        waiting = asyncio.ensure_future(h.engine.wait(saga_id, timeout=60))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        timed_out = await h.engine.wait(saga_id, timeout=0)
        assert timed_out.status is SagaStatus.RUNNING
        assert h.engine.running == 1
        answered = asyncio.ensure_future(h.engine.wait(saga_id, timeout=60))
        hang.release()
        done = await answered
    assert done.status is SagaStatus.SUCCEEDED
