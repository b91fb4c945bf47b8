"""Prometheus metrics for an engine, as an engine hook (needs ``prometheus-client``)::

    from sagaway.metrics import PrometheusHook
    engine = Engine(store, hooks=[PrometheusHook(store=store)])
    # then expose prometheus_client's default registry (checkout serves it at /metrics)

Metrics (all ``sagaway_*``):

* ``sagaway_sagas_started_total{saga}``: sagas recorded by this process's ``start``.
* ``sagaway_sagas_finished_total{saga,status}``: sagas this process drove to SUCCEEDED,
  COMPENSATED or FAILED. A FAILED saga that an operator retries finishes again: count it twice.
* ``sagaway_sagas_in_flight{saga}``: sagas this process is driving right now.
* ``sagaway_step_duration_seconds{saga,step,phase,outcome}`` (histogram): how long each attempt of
  an action (``phase="forward"``) or a compensation ran; ``outcome`` is succeeded, retrying or
  failed.
* ``sagaway_step_retries_total{saga,step}``: attempts that failed and were tried again.
* ``sagaway_store_commit_seconds`` (histogram): a durable transition's latency as the saga saw it
  (group-commit wait included). ``sagaway_store_batches_total`` and
  ``sagaway_store_batched_operations_total`` (stores that group-commit: SQLite, PostgreSQL) give
  the batch size: ``rate(operations) / rate(batches)``.
* ``sagaway_outbox_pending``: messages in the saga log's outbox not yet published
  (``OutboxStore.outbox_count()``, read at scrape time: on a scrape from another thread it waits
  up to ``scrape_timeout`` (5 s) for the engine's loop to answer; on the loop itself, e.g. an async
  ``/metrics`` route, it reports the count read at the previous scrape; ``await hook.refresh()``
  first for a fresh one). 0 for a store without an outbox.
* ``sagaway_sagas_waiting{saga}``: sagas parked in the store (waiting for a reply or a signal),
  read at scrape time like the outbox (``store.list_waiting``): the first ``WAITING_SCAN`` parked
  sagas are counted by saga name, any beyond under ``saga=""`` (the sum stays exact). Both
  gauges count the whole store, not this process: in a scale-out deployment query them from
  one process (``max without (instance) (...)``), not summed over every process.

Cost: the hook counts sagas into plain Python ints, and the engine appends each step attempt's
duration and each commit's latency to the hook's lists (``Hook.step_sink``, ``commit_sink``: no
call into the hook per step or commit). A scrape, and between scrapes a timer on the engine's
loop every ``FOLD_SECONDS``, counts them into the histograms (sorted, then bisected per bucket
bound, in C), and a collector turns the counts into Prometheus families: a scrape sees every
attempt and commit that ended before it, as before. prometheus-client's own metric objects
cost 3-5 us per update here (a lock each), which was 37% of an in-memory saga's CPU; this way
it is ~5% in instructions (``benchmarks/observability_cost.py --callgrind``).

Several processes: every process has its own numbers, so scrape each one (``checkout serve``
serves ``/metrics``; ``checkout worker`` serves them on ``SAGAWAY_METRICS_PORT``) and aggregate
in Prometheus (``sum by (saga) (...)``). prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) does not see these: it only aggregates its own metric objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sagaway.hooks import ClaimReason, Hook, StepKey, StepOutcome, StepSink
from sagaway.state import Phase, SagaRecord
from sagaway.store.base import OutboxStore, SagaStore

__all__ = ["COMMIT_BUCKETS", "STEP_BUCKETS", "PrometheusHook"]

WAITING_SCAN = 5000  # parked sagas read per scrape to count them by saga name
WAITING_PAGE = 500
FRESH_SECONDS = 1.0  # a scrape right after a refresh (an awaiting route) reads no store again

# Steps are participant calls: a millisecond to tens of seconds.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


_RETRYING = StepOutcome.RETRYING
_FORWARD, _UNDO, _SUCCEEDED = Phase.FORWARD, Phase.COMPENSATION, StepOutcome.SUCCEEDED
SORT_FROM = 64  # observations of one label set from which a fold sorts them (see _take)
# How often the engine's loop folds the sinks between scrapes: bounds their memory, and what
# a scrape thread has to sort (holding the GIL).
FOLD_SECONDS = 10.0


class _Histogram:
    """One label set's histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.total += value


def _take(sink: list[float], hist: _Histogram, bounds: tuple[float, ...]) -> None:
    """Move the observations in ``sink`` into ``hist``. Copy, then delete what was copied: the
    loop may append meanwhile (at the end), and each of the two list operations is atomic."""
    taken = sink[:]
    if not taken:
        return
    del sink[: len(taken)]
    hist.total = sum(taken, hist.total)  # left to right: the same float as one += at a time
    counts = hist.counts
    if len(taken) < SORT_FROM:
        for value in taken:
            counts[bisect_left(bounds, value)] += 1
        return
    # Many: sorted (list.sort compares floats natively), then one bisection per bound
    # instead of one per value; a value equal to a bound is in that bound's bucket (le).
    taken.sort()
    below = 0
    for index, bound in enumerate(bounds):
        upto = bisect_right(taken, bound)
        counts[index] += upto - below
        below = upto
    counts[-1] += len(taken) - below


def _histogram_family(
    name: str,
    doc: str,
    labels: list[str],
    bounds: tuple[float, ...],
    series: Iterable[tuple[tuple[str, ...], _Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, bounds), "+Inf"), hist.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family.add_metric(list(values), buckets, hist.total)
    return family


class PrometheusHook(Hook, Collector):
    """Counts and times sagas and steps for Prometheus (see the module docstring).

    It registers itself as a collector on ``registry`` (the default one unless told, ``None``
    for none: call ``collect`` yourself). ``store``: the engine's store, to export its
    group-commit counters, read at scrape time.
    """

    unguarded = True  # its methods are dict arithmetic on names: called without a guard

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, *, store: Any = None) -> None:
        self._store = store
        # defaultdict: one increment (+= 1) instead of a get and a set, per saga.
        self._started: defaultdict[str, int] = defaultdict(int)
        self._finished: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._steps: dict[StepKey, _Histogram] = {}
        self._commits = _Histogram(len(COMMIT_BUCKETS))
        # The engine appends every attempt's seconds (by its Step, or by its labels) and every
        # commit's latency here (Hook.step_sink): a list append per step and commit instead of
        # a call into this hook; _fold counts them into the histograms.
        self.step_sink: StepSink = StepSink()
        self.commit_sink: list[float] = []
        self._folding = threading.Lock()  # a scrape thread and the loop may both fold
        self._folding_on_loop = False
        self._outbox_pending = 0
        # How long a scrape from another thread waits for the loop to read the outbox count
        # (Prometheus' default scrape timeout is 10 s); past it, the last count is reported.
        self.scrape_timeout = 5.0
        self._waiting: dict[str, int] = {}
        self._refreshed_at = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None  # the engine's, for scrape threads
        self._refreshing: asyncio.Task[None] | None = None
        if registry is not None:
            registry.register(self)

    # -- the hook: plain Python counting on the engine's loop ---------------------------------

    def saga_started(self, record: SagaRecord) -> None:
        self._started[record.name] += 1

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        if not self._folding_on_loop:
            self._fold_periodically(asyncio.get_running_loop())
        self._in_flight[record.name] += 1

    def _fold(self) -> None:
        """Count the attempts and commits the engine appended to the sinks into the
        histograms: on a scrape (any thread) and every FOLD_SECONDS (on the loop)."""
        with self._folding:
            sink = self.step_sink
            for step, seconds in list(sink.forward_ok.items()):
                self._take_step((step.saga.name, step.name, _FORWARD, _SUCCEEDED), seconds)
            for step, seconds in list(sink.undo_ok.items()):
                self._take_step((step.saga.name, step.name, _UNDO, _SUCCEEDED), seconds)
            for key, seconds in list(sink.ended.items()):
                self._take_step(key, seconds)
            _take(self.commit_sink, self._commits, COMMIT_BUCKETS)

    def _fold_periodically(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fold now and again in FOLD_SECONDS on the engine's loop (from its first claim);
        it stops with the loop."""
        self._loop = self._loop or loop
        self._folding_on_loop = True
        self._fold()
        loop.call_later(FOLD_SECONDS, self._fold_periodically, loop)

    def _take_step(self, key: StepKey, seconds: list[float]) -> None:
        hist = self._steps.get(key)
        if hist is None:
            hist = self._steps[key] = _Histogram(len(STEP_BUCKETS))
        _take(seconds, hist, STEP_BUCKETS)

    def on_finish(self, record: SagaRecord) -> None:
        name = record.name
        self._in_flight[name] -= 1
        self._finished[name, record.status] += 1

    def on_release(self, record: SagaRecord, reason: str) -> None:
        self._in_flight[record.name] -= 1

    def on_park(self, record: SagaRecord, reason: str) -> None:
        # Parked, it holds no task here; a wake-up claims it again (after_claim).
        self._in_flight[record.name] -= 1

    def _retries(self) -> dict[tuple[str, str], int]:
        """sagaway_step_retries_total: the attempts that ended RETRYING, in either phase."""
        retries: dict[tuple[str, str], int] = {}
        for (name, step, _, outcome), hist in list(self._steps.items()):
            if outcome is _RETRYING:
                retries[name, step] = retries.get((name, step), 0) + sum(hist.counts)
        return retries

    # -- the collector: runs when Prometheus scrapes ------------------------------------------

    async def refresh(self) -> None:
        """Read the gauges that need the store (``sagaway_outbox_pending``,
        ``sagaway_sagas_waiting``) now."""
        store = self._store
        if not _has_gauges(store):
            return
        self._loop = asyncio.get_running_loop()
        if isinstance(store, OutboxStore):
            self._outbox_pending = await store.outbox_count()
        self._waiting = await _waiting_by_saga(store)
        self._refreshed_at = time.monotonic()

    def _refresh_for_scrape(self) -> None:
        """On the engine's loop (an async route): start a refresh for the next scrape. From
        another thread: ask the loop and wait for the answer, briefly."""
        if not _has_gauges(self._store):
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            fresh = time.monotonic() - self._refreshed_at < FRESH_SECONDS
            if not fresh and (self._refreshing is None or self._refreshing.done()):
                self._refreshing = running.create_task(self._quiet_refresh())
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._quiet_refresh(), loop)
        with contextlib.suppress(FutureTimeout):
            future.result(timeout=self.scrape_timeout)

    async def _quiet_refresh(self) -> None:
        # A gauge must never fail a scrape: a store error leaves the last value.
        with contextlib.suppress(Exception):
            await self.refresh()

    def collect(self) -> Iterator[Metric]:
        self._fold()
        # Snapshots (list(...)): the loop may add a label set while a scrape thread iterates.
        started = CounterMetricFamily(
            "sagaway_sagas_started", "Sagas recorded by this process", labels=["saga"]
        )
        for name, count in list(self._started.items()):
            started.add_metric([name], count)
        yield started
        finished = CounterMetricFamily(
            "sagaway_sagas_finished",
            "Sagas this process drove to a terminal status",
            labels=["saga", "status"],
        )
        for (name, status), count in list(self._finished.items()):
            finished.add_metric([name, status], count)
        yield finished
        in_flight = GaugeMetricFamily(
            "sagaway_sagas_in_flight", "Sagas this process is driving now", labels=["saga"]
        )
        for name, count in list(self._in_flight.items()):
            in_flight.add_metric([name], count)
        yield in_flight
        yield _histogram_family(
            "sagaway_step_duration_seconds",
            "How long one attempt of a step's action or compensation ran",
            ["saga", "step", "phase", "outcome"],
            STEP_BUCKETS,
            list(self._steps.items()),
        )
        retries = CounterMetricFamily(
            "sagaway_step_retries",
            "Step attempts that failed and were tried again",
            labels=["saga", "step"],
        )
        for (name, step), count in self._retries().items():
            retries.add_metric([name, step], count)
        yield retries
        yield _histogram_family(
            "sagaway_store_commit_seconds",
            "Latency of one durable saga transition (group-commit wait included)",
            [],
            COMMIT_BUCKETS,
            [((), self._commits)],
        )
        self._refresh_for_scrape()
        waiting = GaugeMetricFamily(
            "sagaway_sagas_waiting",
            "Sagas parked in the store, waiting for a reply or a signal",
            labels=["saga"],
        )
        for name, count in list(self._waiting.items()):
            waiting.add_metric([name], count)
        yield waiting
        yield GaugeMetricFamily(
            "sagaway_outbox_pending",
            "Messages in the saga log's outbox not yet published",
            value=self._outbox_pending,
        )
        stats = getattr(self._store, "stats", None)
        if stats is not None and hasattr(stats, "batches"):
            yield CounterMetricFamily(
                "sagaway_store_batches",
                "Group commits (one durable write each) made by this process's saga store",
                value=stats.batches,
            )
            yield CounterMetricFamily(
                "sagaway_store_batched_operations",
                "Operations written by those group commits (divide by batches: the batch size)",
                value=stats.operations,
            )


def _has_gauges(store: Any) -> bool:
    return store is not None and callable(getattr(store, "list_waiting", None))


async def _waiting_by_saga(store: SagaStore) -> dict[str, int]:
    """Parked sagas per saga name: the first WAITING_SCAN (soonest deadline first) read and
    grouped, the rest under the empty name, so that the sum is the store's total."""
    counts: dict[str, int] = {}
    offset = total = 0
    while offset < WAITING_SCAN:
        page = await store.list_waiting(
            limit=min(WAITING_PAGE, WAITING_SCAN - offset), offset=offset
        )
        total = page.total
        for record in page.items:
            counts[record.name] = counts.get(record.name, 0) + 1
        offset += len(page.items)
        if not page.items or offset >= total:
            break
    rest = total - offset
    if rest > 0:
        counts[""] = counts.get("", 0) + rest
    return counts
