"""The Prometheus hook: what a scrape reads after sagas ran."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sagakit import Kit, Order

from sagaway import SagaStatus, metrics
from sagaway.metrics import COMMIT_BUCKETS, PrometheusHook
from sagaway.state import Change, NewSaga, OutboxMessage, Park
from sagaway.store.memory import MemoryStore
from sagaway.testing import saga_engine

RUNNING = SagaStatus.RUNNING


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_counts_sagas_steps_retries_and_commits(kit: Kit, order: Order) -> None:
    registry = CollectorRegistry()
    kit.faults.fail("b", times=1)
    async with saga_engine(kit.saga, hooks=[PrometheusHook(registry)]) as h:
        ok = await h.run(kit.saga, order)
        kit.faults.clear()
        kit.faults.reject("c", "Insufficient funds")
        bad = await h.run(kit.saga, Order(id="o-2", amount=5))
        assert value(registry, "sagaway_sagas_in_flight", saga="order") == 0
    assert (ok.status, bad.status) == (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED)
    assert value(registry, "sagaway_sagas_started_total", saga="order") == 2
    finished = "sagaway_sagas_finished_total"
    assert value(registry, finished, saga="order", status="SUCCEEDED") == 1
    assert value(registry, finished, saga="order", status="COMPENSATED") == 1
    assert value(registry, "sagaway_step_retries_total", saga="order", step="b") == 1
    steps = "sagaway_step_duration_seconds_count"
    forward = {"saga": "order", "phase": "forward"}
    assert value(registry, steps, step="b", outcome="retrying", **forward) == 1
    assert value(registry, steps, step="b", outcome="succeeded", **forward) == 2
    assert value(registry, steps, step="c", outcome="failed", **forward) == 1
    undo = {"saga": "order", "phase": "compensation", "outcome": "succeeded"}
    assert value(registry, steps, step="a", **undo) == 1
    assert value(registry, steps, step="b", **undo) == 1
    # Commits: 3 for the happy saga (step 0 rides with the start), 4 for the other
    # (b, c, compensation starts with undo of b, undo of a, the end = 4).
    commits = value(registry, "sagaway_store_commit_seconds_count")
    assert commits is not None
    assert commits >= 5
    bucket = value(registry, "sagaway_store_commit_seconds_bucket", le="+Inf")
    assert bucket == commits, "the +Inf bucket holds every observation"
    assert value(registry, "sagaway_outbox_pending") == 0
    text = generate_latest(registry).decode()
    assert "# TYPE sagaway_step_duration_seconds histogram" in text
    assert "# TYPE sagaway_sagas_waiting gauge" in text


async def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    for seconds in (0.0004, 0.001, 0.003, 0.003, 99.0):
        hook.commit_sink.append(seconds)  # as the engine does after each commit
    text = generate_latest(registry).decode()
    assert 'sagaway_store_commit_seconds_bucket{le="0.0005"} 1.0' in text
    assert 'sagaway_store_commit_seconds_bucket{le="0.001"} 2.0' in text, "le is inclusive"
    assert 'sagaway_store_commit_seconds_bucket{le="0.0025"} 2.0' in text
    assert 'sagaway_store_commit_seconds_bucket{le="0.005"} 4.0' in text
    assert 'sagaway_store_commit_seconds_bucket{le="2.5"} 4.0' in text
    assert 'sagaway_store_commit_seconds_bucket{le="+Inf"} 5.0' in text
    assert "sagaway_store_commit_seconds_sum 99.0074" in text
    assert hook.commit_sink == [], "a scrape moves what it counted out of the sink"


async def test_many_observations_fold_into_the_same_buckets_as_one_at_a_time() -> None:
    # From SORT_FROM values a fold sorts them and bisects per bound instead of per value:
    # both must put a value equal to a bound in that bound's bucket, and sum in one order.
    values = [b * f for b in COMMIT_BUCKETS for f in (0.5, 1.0, 1.0, 1.5)] + [7e-5, 99.0]
    values = values * (metrics.SORT_FROM // len(values) + 1)
    assert len(values) >= metrics.SORT_FROM
    one_at_a_time = metrics._Histogram(len(COMMIT_BUCKETS))
    for seconds in values:
        one_at_a_time.observe(COMMIT_BUCKETS, seconds)
    hook = PrometheusHook(None)
    hook.commit_sink.extend(values)
    list(hook.collect())
    assert hook._commits.counts == one_at_a_time.counts
    assert hook._commits.total == one_at_a_time.total


async def test_store_batch_counters_are_read_at_scrape(tmp_path: object, kit: Kit) -> None:
    from sagaway.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/m.db")
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    async with saga_engine(kit.saga, store=store, hooks=[hook]) as h:  # type: ignore[arg-type]
        await h.run(kit.saga, Order(id="x", amount=1))
        batches = value(registry, "sagaway_store_batches_total")
        operations = value(registry, "sagaway_store_batched_operations_total")
    assert batches is not None
    assert operations is not None
    assert operations >= batches >= 1


async def _store_with_outbox(n: int) -> MemoryStore:
    store = MemoryStore()
    new = NewSaga(id="s", name="order", version=1, input=None, at=0.0, owner="e", status=RUNNING)
    await store.create(new)
    out = tuple(OutboxMessage(f"m{i}", "s", "inventory.reserve", {}, 0.0) for i in range(n))
    await store.commit("s", "e", Change(outbox=out), 1.0)
    return store


async def test_outbox_pending_reads_the_store_on_the_loop() -> None:
    # An async /metrics route scrapes on the engine's loop: it reports the count read at the
    # previous scrape, and starts the read for the next one (or ``refresh`` it first).
    store = await _store_with_outbox(3)
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    assert value(registry, "sagaway_outbox_pending") == 0
    assert hook._refreshing is not None
    await hook._refreshing
    assert value(registry, "sagaway_outbox_pending") == 3
    await store.outbox_delete(["m0"])
    await hook.refresh()
    assert value(registry, "sagaway_outbox_pending") == 2


async def test_outbox_pending_from_a_scrape_thread_asks_the_loop() -> None:
    store = await _store_with_outbox(2)
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    hook.scrape_timeout = 600  # a bound, not a timing assertion: the loop answers at once
    await hook.refresh()  # how the hook learns the engine's loop (after_claim does too)
    await store.outbox_delete(["m1"])
    scraped = await asyncio.to_thread(value, registry, "sagaway_outbox_pending")
    assert scraped == 1


async def _parked(store: MemoryStore) -> None:
    """Three sagas parked: two of saga "order" (deadlines 30 s and 60 s), one "refund" (90 s)."""
    for saga_id, name, until in (
        ("p1", "order", 60.0),
        ("p2", "order", 30.0),
        ("p3", "refund", 90.0),
    ):
        new = NewSaga(
            id=saga_id, name=name, version=1, input=None, at=0.0, owner="e", status=RUNNING
        )
        await store.create(new)
        await store.commit(saga_id, "e", Change(park=Park("signal:approve", until)), 1.0)


async def test_sagas_waiting_counts_parked_sagas_by_saga() -> None:
    store = MemoryStore()
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    await hook.refresh()
    assert value(registry, "sagaway_sagas_waiting", saga="order") is None
    await _parked(store)
    await hook.refresh()
    assert value(registry, "sagaway_sagas_waiting", saga="order") == 2
    assert value(registry, "sagaway_sagas_waiting", saga="refund") == 1
    await store.acquire("p3", "e", now=2.0, lease_seconds=30.0, statuses=[RUNNING])  # signalled
    await store.commit("p3", "e", Change(unpark=True), 2.0)
    await hook.refresh()
    assert value(registry, "sagaway_sagas_waiting", saga="refund") is None


async def test_sagas_waiting_beyond_the_scan_keep_the_sum_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "WAITING_SCAN", 2)
    monkeypatch.setattr(metrics, "WAITING_PAGE", 1)
    store = MemoryStore()
    await _parked(store)
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    await hook.refresh()
    # Soonest deadline first: p2 and p1 ("order") are read, p3 is beyond the scan.
    assert value(registry, "sagaway_sagas_waiting", saga="order") == 2
    assert value(registry, "sagaway_sagas_waiting", saga="") == 1


async def test_sagas_waiting_from_a_scrape_thread_asks_the_loop(kit: Kit, order: Order) -> None:
    store = MemoryStore()
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, store=store)
    async with saga_engine(kit.saga, store=store, hooks=[hook]) as h:
        await h.run(kit.saga, order)  # the hook learns the engine's loop
        await _parked(store)
        # What prometheus_client.start_http_server does: collect on a thread of its own.
        text = (await asyncio.to_thread(generate_latest, registry)).decode()
    assert 'sagaway_sagas_waiting{saga="order"} 2.0' in text
    assert 'sagaway_sagas_waiting{saga="refund"} 1.0' in text


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_a_parked_saga_is_not_in_flight(url: str, tmp_path: object) -> None:
    """In flight = driven by this process: a saga parked on a wait holds no task, so it leaves
    the gauge when it parks and comes back when a signal wakes it."""
    from sagaway import Engine, Saga, SagaRecord, StepContext
    from sagaway.hooks import Hook

    class Parks(Hook):
        """Set once three sagas parked; runs after the metrics hook (later in the list)."""

        def __init__(self) -> None:
            self.count, self.all_parked = 0, asyncio.Event()

        def on_park(self, record: SagaRecord, reason: str) -> None:
            self.count += 1
            if self.count == 3:
                self.all_parked.set()

    saga = Saga("metrics-wait")

    @saga.step
    async def reserve(ctx: StepContext, order: dict[str, int]) -> None:
        return None

    saga.wait("confirmed", timeout=900)
    registry = CollectorRegistry()
    store_url = url if url == "memory://" else f"sqlite:///{tmp_path}/w.db"
    parks = Parks()
    hooks = [PrometheusHook(registry), parks]
    async with Engine(store_url, sagas=[saga], hooks=hooks) as engine:
        ids = [await engine.start(saga, {"n": n}) for n in range(3)]
        async with asyncio.timeout(30):
            await parks.all_parked.wait()
        assert value(registry, "sagaway_sagas_in_flight", saga="metrics-wait") == 0
        for saga_id in ids:
            await engine.signal(saga_id, "confirmed", {"ok": True})
            record = await engine.wait(saga_id, timeout=30)
            assert record.status is SagaStatus.SUCCEEDED
        assert value(registry, "sagaway_sagas_in_flight", saga="metrics-wait") == 0
        finished = "sagaway_sagas_finished_total"
        assert value(registry, finished, saga="metrics-wait", status="SUCCEEDED") == 3
