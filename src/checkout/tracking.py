"""How an order's ``status`` follows its checkout saga, durably.

The saga log is the source of truth; ``orders.status`` is a mirror of it kept for listings and
filters. Three mechanisms together make the mirror correct, even across crashes:

1. **Listener (the fast path).** :meth:`OrderTracker.on_transition` is subscribed to the engine
   before it opens. After every durable *terminal* transition of a checkout saga that this
   process drives, it schedules one guarded ``UPDATE`` of the order (``completed`` /
   ``failed`` / ``cancelled``, the saga's error, the saga id). The API awaits that write before
   answering, so a client that got a 201 reads its own write. Where the orders live in the
   saga log's SQLite file (the embedded default), a success needs no such write: the saga's
   last step writes ``completed`` with ``ctx.atomic()``, which commits in the very transaction
   that records the saga SUCCEEDED, so a kill can never fall between the two.
2. **Reconciliation (the crash path).** A process killed between the saga's terminal write and
   the order update leaves the order ``processing`` while its saga is terminal; one killed
   between recording a checked-out order and starting its saga leaves it ``processing`` with no
   saga. Every process that executes sagas runs :meth:`OrderTracker.reconcile` when it starts
   (before serving) and then every few seconds: orders still ``processing`` whose saga is
   terminal are brought in line, and orders without a saga get it started (the saga's
   idempotency key is the order's, so a start that did happen is found, not repeated). Orders
   touched in the last second are skipped by the periodic pass, since the listener, or the
   request that recorded them, is about to handle them.
3. **Derive on read.** Whoever reads one order (``GET /orders/{id}``, the responses of
   ``POST /orders``) loads its saga and reports the status derived from it
   (:func:`order_status_for`), repairing the row when it lags. So even an API-only process,
   whose sagas run in a worker, never shows a finished order as ``processing``.

Every write is guarded: ``WHERE id = :order AND (saga_id IS NULL OR saga_id = :saga)`` so a
saga never overwrites an order that belongs to another one, and only when something changes,
so repeated mirrors (listener + reconcile + read repair) are harmless no-ops.

Mapping: RUNNING/PENDING/COMPENSATING -> ``processing``; SUCCEEDED -> ``completed``;
COMPENSATED -> ``failed`` (``cancelled`` when the saga was cancelled); FAILED (a compensation
needs an operator) -> ``failed`` with the saga's error. An operator's retry sets the order back
to ``processing`` and the listener mirrors the new outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from sqlalchemy.exc import SQLAlchemyError

from checkout.domain.models import OrderInfo, OrderStatus
from checkout.participants.orders import AlreadyRecorded, NewCheckout, OrderService, saga_input
from checkout.sagas import SAGA_NAME
from sagaway import (
    Change,
    Engine,
    EngineNotOpen,
    InvalidTransition,
    Saga,
    SagaRecord,
    SagaStatus,
    StoreError,
)

log = logging.getLogger("checkout.tracking")

CANCELLED_ERROR = "cancelled"  # the runner's saga error when an operator cancelled it


def saga_key(order_id: str) -> str:
    """The checkout saga's idempotency key: one saga per order, whoever starts it."""
    return f"checkout:{order_id}"


def order_status_for(status: SagaStatus, error: str | None) -> OrderStatus:
    """The order status that mirrors a saga in ``status`` (with the saga's ``error``)."""
    if status is SagaStatus.SUCCEEDED:
        return OrderStatus.COMPLETED
    if status is SagaStatus.COMPENSATED:
        return OrderStatus.CANCELLED if error == CANCELLED_ERROR else OrderStatus.FAILED
    if status is SagaStatus.FAILED:
        return OrderStatus.FAILED
    return OrderStatus.PROCESSING


def order_id_of(record: SagaRecord) -> str | None:
    """The order a checkout saga works on (its input's ``order_id``), else None."""
    if record.name != SAGA_NAME or not isinstance(record.input, dict):
        return None
    order_id = record.input.get("order_id")
    return order_id if isinstance(order_id, str) else None


class OrderTracker:
    """Mirrors checkout sagas' outcomes into ``orders.status``; see the module docstring."""

    def __init__(
        self,
        orders: OrderService,
        engine: Engine,
        saga: Saga,
        *,
        reconcile_interval: float = 5.0,
        grace_seconds: float = 1.0,
        batch: int = 500,
        success_in_saga: bool = False,
    ) -> None:
        self.orders = orders
        self.engine = engine
        self.saga = saga
        self.reconcile_interval = reconcile_interval
        self.grace_seconds = grace_seconds
        self.batch = batch
        # ``saga`` mirrors its own success (build_checkout_saga on orders in the saga log's
        # file): its SUCCEEDED transition needs no write from here.
        self.success_in_saga = success_in_saga
        # Strong references to mirror writes in flight, and the recent ones by saga id (so the
        # API can await the write for the saga it just waited for).
        self._running: set[asyncio.Task[bool]] = set()
        self._recent: OrderedDict[str, asyncio.Future[bool]] = OrderedDict()
        self.remember = 10_000
        self._loop_task: asyncio.Task[None] | None = None

    # -- the listener ---------------------------------------------------------------------

    def on_transition(self, record: SagaRecord, change: Change) -> None:
        """Engine listener: schedule the order update after a saga's terminal transition."""
        if change.status is None or not change.status.is_terminal:
            return
        order_id = order_id_of(record)
        if order_id is None:
            return
        loop = asyncio.get_running_loop()
        task: asyncio.Future[bool]
        if change.status is SagaStatus.SUCCEEDED and self.success_in_saga:
            # The saga's last step wrote ``completed`` in this very transition (ctx.atomic,
            # see checkout.sagas): the row is already durable, nothing to schedule.
            task = loop.create_future()
            task.set_result(True)
        else:
            status = order_status_for(record.status, record.error)
            task = loop.create_task(self._mirror_logged(order_id, record.id, status, record.error))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._recent[record.id] = task
        while len(self._recent) > self.remember:
            self._recent.popitem(last=False)

    async def _mirror_logged(
        self, order_id: str, saga_id: str, status: OrderStatus, error: str | None
    ) -> bool:
        try:
            await self.mirror(order_id, saga_id, status, error)
            return True
        except Exception:  # reconciliation will catch up; never break the engine's loop
            log.exception("order %s: could not mirror saga %s", order_id, saga_id)
            return False

    async def settled(self, saga_id: str) -> bool:
        """Wait for this process's mirror of ``saga_id``'s outcome; True if it was written
        (False: this process did not mirror it recently, or the write failed)."""
        task = self._recent.get(saga_id)
        if task is None:
            return False
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every pending mirror (on shutdown)."""
        if self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    # -- writes ---------------------------------------------------------------------------

    async def mirror(
        self, order_id: str, saga_id: str, status: OrderStatus, error: str | None
    ) -> bool:
        """Set the order's status from its saga; True if the row changed."""
        if status is not OrderStatus.FAILED and status is not OrderStatus.CANCELLED:
            error = None
        return await self.orders.mirror_saga(order_id, saga_id, status, error)

    async def start_checkout(self, order: OrderInfo) -> str:
        """Start the order's saga (or find the one a previous attempt started: the key is the
        order's) and attach it to the order; the saga's id."""
        saga_id = await self.engine.start(
            self.saga, saga_input(order), idempotency_key=saga_key(order.id)
        )
        try:
            await self.attach(order.id, saga_id)
        except (SQLAlchemyError, StoreError, OSError) as exc:
            # The saga is recorded and runs all the same; the row learns its id from the
            # listener's mirror, the next read of the order, or reconciliation (which finds
            # this saga by its key, never a second one).
            log.warning("order %s: saga %s started, not attached yet: %s", order.id, saga_id, exc)
        return saga_id

    async def record_and_start(self, checkout: NewCheckout) -> tuple[OrderInfo, bool] | None:
        """Record a new order and create its saga in one transaction of the saga log
        (``Engine.start_with``): one durable write, and no moment at which the order is there
        without its saga, or attached to none. ``(order, created)``: ``(the order recorded
        before, False)`` when its key or id was taken. None when it could not be done that
        way and nothing was written (the engine is not open; a saga has the order's key
        already): then record it and start its saga as before."""
        try:
            _, created = await self.engine.start_with(
                self.saga, checkout, idempotency_key=saga_key(checkout.order_id)
            )
        except AlreadyRecorded as found:
            return found.order, False
        except EngineNotOpen:
            return None
        if not created:
            return None
        return self.orders.checked_out(checkout), True

    async def attach(self, order_id: str, saga_id: str) -> bool:
        """Mark a draft order as checked out by ``saga_id`` (``processing``). False if it has a
        saga already, which includes the case where the saga finished first and the listener
        recorded its outcome (and id) before this call."""
        return await self.orders.attach_saga(order_id, saga_id)

    async def retry(self, saga_id: str) -> None:
        """The operator's retry of a FAILED saga, order included (API and web UI alike).

        The order is reopened before the retry, because reopening after it could overwrite the
        outcome the listener records when the retried saga finishes quickly; a refused retry
        puts the order's status back."""
        record = await self.engine.get(saga_id)
        if record.status is not SagaStatus.FAILED:
            raise InvalidTransition(
                f"saga {saga_id} is {record.status}: only FAILED sagas can be retried"
            )
        order_id = order_id_of(record)
        if order_id is not None:
            await self.reopen(order_id, saga_id)
        try:
            await self.engine.retry(saga_id)
        except Exception:
            if order_id is not None:
                status = order_status_for(record.status, record.error)
                await self.mirror(order_id, saga_id, status, record.error)
            raise

    async def reopen(self, order_id: str, saga_id: str) -> None:
        """An operator retried the order's saga: it is ``processing`` again."""
        await self.mirror(order_id, saga_id, OrderStatus.PROCESSING, None)

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile(self, *, grace_seconds: float | None = None) -> int:
        """One pass: orders ``processing`` whose saga is terminal get its outcome, and those
        without a saga get one started. Returns how many orders were fixed. ``grace_seconds``
        skips orders updated that recently."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        return await self._start_unstarted(grace) + await self._mirror_finished(grace)

    async def _start_unstarted(self, grace: float) -> int:
        started = 0
        after = ""
        while True:
            ids = await self.orders.unstarted(after, self.batch, grace)
            for order_id in ids:
                order = await self.orders.get_order(order_id)
                if order is not None and order.saga_id is None:
                    saga_id = await self.start_checkout(order)
                    log.warning("order %s had no saga (a crash?): started %s", order_id, saga_id)
                    started += 1
            if len(ids) < self.batch:
                return started
            after = ids[-1]

    async def _mirror_finished(self, grace: float) -> int:
        fixed = 0
        after = ""
        while True:
            rows = await self.orders.processing(after, self.batch, grace)
            if not rows:
                return fixed
            records = await asyncio.gather(
                *(self.engine.store.load(sid, history=False) for _, sid in rows)
            )
            for (order_id, saga_id), record in zip(rows, records, strict=True):
                if record is None or not record.status.is_terminal:
                    continue
                status = order_status_for(record.status, record.error)
                if await self.mirror(order_id, saga_id, status, record.error):
                    fixed += 1
            if len(rows) < self.batch:
                return fixed
            after = rows[-1][0]

    def start(self) -> None:
        """Reconcile every ``reconcile_interval`` seconds in the background."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._reconcile_loop(), name="checkout-reconcile"
            )

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.drain()

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_interval)
            try:
                fixed = await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("order reconciliation failed; retrying")
                continue
            if fixed:
                log.warning("reconciled %d orders left behind by their sagas", fixed)
