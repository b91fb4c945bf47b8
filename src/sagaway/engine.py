"""The engine: starts saga instances, drives them under a lease, and takes over orphaned ones.

One engine serves many thousands of concurrent sagas on one asyncio loop. Several engines (in one
or many processes) may share a store: leases decide which one drives a saga, and the store fences
every write with the lease, so a saga is never driven by two engines at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from time import time
from types import TracebackType
from typing import Any, Final

from sagaway.clock import Clock, SystemClock
from sagaway.definition import Saga, declared_sagas
from sagaway.errors import (
    DefinitionError,
    EngineNotOpen,
    InvalidTransition,
    LeaseLost,
    StoreError,
    TakeConflict,
    UnknownSagaError,
    UnstorableValue,
)
from sagaway.hooks import CLAIM_STARTED, ClaimReason, Hook, HookChain
from sagaway.outbox_relay import OutboxRelay
from sagaway.parked import ParkedSagas, SignalReceipt
from sagaway.recovery import Recovery
from sagaway.retention import Retention
from sagaway.rules import compensation_reason, last_cancellable, past_pivot, retry_requested
from sagaway.runner import CommitListener, SagaRun
from sagaway.state import (
    TERMINAL,
    Change,
    Event,
    EventType,
    NewSaga,
    SagaRecord,
    SagaStatus,
    apply_change,
    new_saga,
    new_saga_id,
    record_from_new,
)
from sagaway.store import SagaStore, open_store
from sagaway.store._codec import check_text, check_value, plainly_storable
from sagaway.store._memory_commit import MemoryCreate
from sagaway.store.base import Page, TransactionalStore
from sagaway.transport.base import Dispatcher, Reply
from sagaway.transport.stub import StubDispatcher

# Re-exported: they were defined here before the rules moved to ``sagaway.rules``.
__all__ = ["Engine", "SignalReceipt", "compensation_reason", "last_cancellable", "past_pivot"]

log = logging.getLogger("sagaway.engine")

# What every start, wait and spawn calls, as Final names: compiled, a Final is a C static, where
# an imported name or a module's attribute is looked up at every use (~110-220 instructions).
_time: Final = time
_get_running_loop: Final = asyncio.get_running_loop
_Future: Final = asyncio.Future
_Task: Final = asyncio.Task

# How often ``wait`` looks at the store for a saga it is not driving: from the first look,
# doubling to the longest (at once for one parked here). A run of it in this engine wakes it.
WAIT_FIRST_LOOK = 0.005
WAIT_LONGEST_LOOK = 0.25
PARKED_HERE = "parked here"  # what a run that ended parked tells its saga's waiters


def _time_out(waiter: asyncio.Future[SagaRecord | str | None]) -> None:
    """A wait's timer: its time is up, unless the run answered it first."""
    if not waiter.done():
        waiter.set_result(None)


class Engine:
    """Runs sagas durably on a store (an object, or a URL such as ``sqlite:///sagas.db``).

    Use ``async with Engine(...) as engine`` (or ``await engine.open()``/``close()``): opening
    runs a first recovery pass at once, then keeps renewing this engine's leases and claiming
    sagas whose owner stopped renewing theirs.

    The engine knows (resumes, and runs the sagas of) every saga definition declared in the
    process, including ones imported after it opened, plus any it is given to ``start``. Pass
    ``sagas=[...]`` to narrow that to a list (a worker that serves some definitions only).
    Unfinished sagas of a definition it does not know are left alone, with a warning.

    ``owner_id`` names this engine in leases. Give a worker a stable id (its host name and slot,
    say) and, after a crash, its replacement takes its sagas back immediately instead of waiting
    for the leases to expire. ``execute=False`` makes an API-only engine: it records new sagas
    as PENDING for workers to claim and runs nothing itself. ``hooks`` (see
    :mod:`sagaway.hooks`) observe sagas and steps: metrics, tracing, logs. With
    ``retention_days`` the engine prunes finished sagas that old (see :mod:`sagaway.retention`).
    """

    def __init__(
        self,
        store: SagaStore | str = "memory://",
        *,
        sagas: Iterable[Saga] | None = None,
        owner_id: str | None = None,
        lease_seconds: float = 5.0,
        recovery_interval: float = 1.0,
        max_concurrency: int = 10_000,
        execute: bool = True,
        clock: Clock | None = None,
        hooks: Iterable[Hook] = (),
        transport: Dispatcher | None = None,
        retention_days: float | int | None = None,  # int: compiled, a float param takes True as 1
    ) -> None:
        if lease_seconds <= 0 or recovery_interval <= 0 or max_concurrency < 1:
            raise ValueError("lease_seconds, recovery_interval, max_concurrency must be positive")
        self.store = open_store(store) if isinstance(store, str) else store
        self.owner_id = owner_id or (f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        check_text(self.owner_id, "the engine's owner_id")  # it goes into every step's history
        self.lease_seconds = lease_seconds
        self.recovery_interval = recovery_interval
        self.max_concurrency = max_concurrency
        self.execute = execute
        self.clock: Clock = clock or SystemClock()
        self._system_time = type(self.clock) is SystemClock
        # Finished sagas older than this are pruned by the maintenance loop (sagaway.retention).
        self._retention = (
            None if retention_days is None else Retention(self.store, retention_days, self.clock)
        )
        self._sagas: dict[tuple[str, int], Saga] = {}
        self._registered: set[Saga] = set()  # the definitions in _sagas, by identity
        # None: every saga declared in the process (see definition.declared_sagas).
        self._narrowed = sagas is not None
        self._warned_unknown: set[tuple[str, int]] = set()
        self._next_unknown_check = 0.0
        # The runs this engine drives, each holding its task: the one strong reference a saga's
        # task has (asyncio keeps weak ones), until its _drive ends and drops it.
        self._runs: dict[str, SagaRun] = {}
        self._waiters: dict[str, list[asyncio.Future[SagaRecord | str | None]]] = {}
        self._listeners: list[CommitListener] = []
        # Runs whose first write carries a signal: the signal's caller awaits it.
        self._committing: dict[str, asyncio.Future[None]] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._opened = False
        # None while no hook is registered: the runner then calls none and times nothing.
        self._hooks: HookChain | None = None
        # How remote steps reach their participants. The default has none: a remote step
        # then fails with a reply naming its participant. The engine opens the transport;
        # it closes only the one it made (a transport passed in may outlive it).
        self.transport: Dispatcher = transport if transport is not None else StubDispatcher()
        self._own_transport = transport is None
        self._parks = self.transport.parks
        # Collaborators: the outbox relay, replies and signals for parked sagas, recovery.
        self._relay = OutboxRelay(self.store, self.transport, self.clock)
        self._parked = ParkedSagas(self)
        self._recovery = Recovery(self)
        for hook in hooks:
            self.add_hook(hook)
        for saga in sagas or ():
            self.register(saga)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> Engine:
        if self._opened:
            return self
        await self.store.open()
        self._opened = True
        await self.transport.open()
        if self._parks and self.execute:  # an API-only engine drives nothing, replies neither
            self.transport.on_reply(self._parked.apply_reply)
        if self.execute:
            self.store.on_work(self.wake)
            # Recover at once (taking back our own sagas from a previous life), then keep going.
            await self.recover(include_own=True)
            self._maintainer = asyncio.create_task(
                self._recovery.maintain(), name="sagaway-maintain"
            )
        return self

    async def close(self) -> None:
        """Stop driving sagas (they stay in the log and resume later) and close the store."""
        if not self._opened:
            return
        self._opened = False
        tasks = [t for t in (self._maintainer, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # what is left undeleted, the sweep re-sends
            await self.flush_outbox()
        if self._own_transport:
            await self.transport.close()
        await self.store.close()

    async def __aenter__(self) -> Engine:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- definitions --------------------------------------------------------------------------

    def register(self, saga: Saga) -> Saga:
        existing = self._sagas.get(saga.key)
        if existing is not None and existing is not saga:
            raise DefinitionError(
                f"another definition of saga {saga.name!r} version {saga.version} is registered"
            )
        if not saga.steps:
            raise DefinitionError(f"saga {saga.name!r} has no steps")
        self._sagas[saga.key] = saga
        self._registered.add(saga)
        return saga

    def definition(self, name: str, version: int) -> Saga:
        saga = self._lookup(name, version)
        if saga is None:
            raise UnknownSagaError(name, version)
        return saga

    def known_sagas(self) -> dict[tuple[str, int], Saga]:
        """The definitions this engine resumes, by (name, version)."""
        return dict(self._sagas) if self._narrowed else {**declared_sagas(), **self._sagas}

    def _lookup(self, name: str, version: int) -> Saga | None:
        saga = self._sagas.get((name, version))
        if saga is None and not self._narrowed:
            saga = declared_sagas().get((name, version))
        return saga

    def subscribe(self, listener: Callable[[SagaRecord, Change], None]) -> None:
        """Call ``listener(record, change)`` after every durable transition this engine makes
        (metrics, live timelines). It runs on the loop: keep it fast and non-blocking."""
        self._listeners.append(listener)

    def add_hook(self, hook: Hook) -> None:
        """Register an engine hook (see :mod:`sagaway.hooks`); sagas claimed from now on see
        it. Hooks run in registration order."""
        current = () if self._hooks is None else self._hooks.hooks
        self._hooks = HookChain((*current, hook))

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return () if self._hooks is None else self._hooks.hooks

    @property
    def _tasks(self) -> set[asyncio.Task[None]]:
        """The tasks driving this engine's runs (a set kept beside ``_runs`` cost an add and a
        discard a saga)."""
        return {run.task for run in self._runs.values() if run.task is not None}

    @property
    def running(self) -> int:
        """How many sagas this engine is driving right now."""
        return len(self._runs)

    # -- starting and observing ---------------------------------------------------------------

    async def start(
        self,
        saga: Saga,
        input: Any,
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> str:
        """Record a new saga durably and start it; return its id. With an ``idempotency_key``
        already used, return that saga's id and start nothing. ``deadline`` (seconds from now,
        default the saga's) makes it compensate if unfinished."""
        new = self._new_saga(saga, idempotency_key, deadline)
        new.input = self._checked_input(saga, input)
        create_now = self.store.inline_create  # (see SagaStore.inline_commit)
        kept: SagaRecord | None = None  # the store's record of it, from inline_create
        if create_now is not None:
            if isinstance(create_now, MemoryCreate):  # a native call (see MemoryCreate)
                saga_id, kept = create_now.create(new)
            else:
                saga_id, kept = create_now(new)
            created = kept is not None
        else:
            saga_id, created = await self.store.create(new)
        if created:
            self._run_created(saga, new, kept)
        return saga_id

    async def start_with(
        self,
        saga: Saga,
        record: Callable[[Any, str], Any],
        *,
        idempotency_key: str,
        deadline: float | None = None,
    ) -> tuple[str, bool]:
        """Start a saga together with the application's own writes, in one transaction of
        the log's (a ``TransactionalStore``'s; else ``TypeError``): ``record(connection,
        saga_id)`` runs in the transaction that creates the saga, before its row, writes what
        it writes there (the connection is the one ``ctx.atomic()`` writes get) and returns the
        saga's input. Its writes and the saga commit together or not at all: if it raises,
        nothing is written and its exception is raised here. Returns ``(saga_id, created)``;
        with ``idempotency_key`` already used: ``(that saga's id, False)``, nothing written
        (``record``'s writes undone if it ran). One durable write where ``start`` after the
        application's own write takes two, and no moment at which one is there without the
        other."""
        store = self.store
        if not isinstance(store, TransactionalStore):
            raise TypeError(f"start_with needs a TransactionalStore, not {type(store).__name__}")
        new = self._new_saga(saga, idempotency_key, deadline)
        saga_id = new.id

        def prepare(connection: Any) -> Any:
            return self._checked_input(saga, record(connection, saga_id))

        created_id, created = await store.create_with(new, prepare)
        if created:
            self._run_created(saga, new, None)
        return created_id, created

    def _checked_input(self, saga: Saga, input: Any) -> Any:
        """The saga's input encoded, refused here before anything is written, the same way on
        every store. What it names is formatted only for a refused input (it cost more than
        the check itself)."""
        encoded = saga.encode_input(input)
        if not plainly_storable(encoded):  # (most inputs: no need to encode them to tell)
            try:
                check_value(encoded, "")
            except UnstorableValue:
                what = f"the input of saga {saga.name!r} (a {type(input).__name__})"
                check_value(encoded, what)
                raise
        return encoded

    def _new_saga(self, saga: Saga, idempotency_key: str | None, deadline: float | None) -> NewSaga:
        """A new saga's first record, without its input (the caller sets it, checked)."""
        if not (self._opened or self.store.is_open):  # a store shared with an open engine will do
            raise EngineNotOpen()
        # Registered already: nothing to check again. (By the object: ``saga.key`` builds a
        # tuple and hashes it, at every start.)
        if saga not in self._registered:
            self.register(saga)
        # time.time() for the system clock (compiled, a call through the Clock protocol is a
        # generic method call), a test's clock through its method.
        now = _time() if self._system_time else self.clock.now()
        seconds = deadline if deadline is not None else saga.deadline
        deadline_at = None if seconds is None else now + seconds
        check_text(idempotency_key, "the idempotency key")
        return new_saga(
            new_saga_id(now),
            saga.name,
            saga.version,
            saga.steps[0].name,
            None,
            now,
            idempotency_key,
            deadline_at,
            self.owner_id if self.execute else None,
            now + self.lease_seconds,
        )

    def _run_created(self, saga: Saga, new: NewSaga, kept: SagaRecord | None) -> None:
        """Drive the saga just created (``new``) here, or tell the hooks it is queued."""
        hooks = self._hooks
        if self.execute:
            # What running_record returns, without the call (interpreted, on the memory
            # store: ~1.2k instructions a saga compiled).
            if kept is not None and self.store.shares_records:
                record = kept
            else:
                record = self.store.running_record(new)
            if hooks is not None:
                hooks.saga_started(record)
            self._spawn(saga, record, prewritten=True, reason=CLAIM_STARTED)
        elif hooks is not None:
            hooks.saga_started(record_from_new(new))

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga with its steps and history; ``SagaNotFound`` if there is none."""
        return self._typed(await self.store.get(saga_id))

    def _typed(self, record: SagaRecord) -> SagaRecord:
        """Attach the record's definition, so ``record.output(step)`` returns typed values."""
        if record.definition is None:
            record.definition = self._lookup(record.name, record.version)
        return record

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        return await self.store.list_sagas(status=status, name=name, limit=limit, offset=offset)

    async def wait(self, saga_id: str, timeout: float | None = None) -> SagaRecord:
        """Wait until the saga is terminal or ``timeout`` seconds pass; return it either way (see
        ``record.status.is_terminal``), with its steps, without its history (``get`` has it)."""
        loop: asyncio.AbstractEventLoop | None = None  # (read once it is needed)
        until: float | None = None
        if timeout is not None:
            loop = _get_running_loop()
            until = loop.time() + timeout
        delay, look = WAIT_FIRST_LOOK, True
        if saga_id in self._runs:
            # The running loop's (Future() takes it as loop=loop would, without parsing a
            # keyword: ~0.3k instructions); not loop.create_future(): a Python frame more.
            future: asyncio.Future[SagaRecord | str | None] = _Future()
            # (not setdefault(saga_id, []): compiled, that builds a list even when one is there)
            waiters = self._waiters.get(saga_id)
            if waiters is None:
                self._waiters[saga_id] = [future]
            else:
                waiters.append(future)
            if timeout is None:
                final = await future
            else:
                # The timeout resolves this wait's own future with None (as a run that stops
                # unfinished does), rather than cancelling the task as asyncio.timeout does
                # (~25k instructions a call): the same answer, and the saga is never touched.
                assert loop is not None
                assert until is not None
                timer = loop.call_at(until, _time_out, future)
                try:
                    final = await future
                finally:
                    timer.cancel()
            if isinstance(final, SagaRecord):  # driven here to the end: no need to read it
                return final
            if final is None:
                record = self._typed(await self.store.get(saga_id, history=False))
                if record.status.is_terminal or not self._opened:
                    return record
            else:  # parked here, durably: a reply applied here wakes us, no need to read it
                delay = WAIT_LONGEST_LOOK
            look = False  # just read, or parked: wait before the first look below
        if loop is None:
            loop = _get_running_loop()
        while True:  # driven by another engine, or parked: the store is the place to look
            left = None if until is None else until - loop.time()
            if look:
                record = await self.store.get(saga_id, history=False)
                if record.status.is_terminal or (left is not None and left <= 0):
                    return self._typed(record)
                if saga_id in self._runs:  # claimed by us meanwhile
                    return await self.wait(saga_id, left)
            look = True
            woken = await self._woken(saga_id, delay if left is None else min(delay, left))
            if woken is not None:
                return woken
            delay = min(delay * 2, WAIT_LONGEST_LOOK)

    async def _woken(self, saga_id: str, seconds: float) -> SagaRecord | None:
        """Sleep up to ``seconds``, or until a run of the saga here finishes it: its record then.
        A run that parks it again here sleeps on (waking cost a log read per step for nothing)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        woken: SagaRecord | str | None = PARKED_HERE
        while woken is PARKED_HERE:
            future: asyncio.Future[SagaRecord | str | None] = loop.create_future()
            self._waiters.setdefault(saga_id, []).append(future)
            try:
                async with asyncio.timeout(end - loop.time()):
                    woken = await future
            except TimeoutError:
                return None
            finally:
                waiters = self._waiters.get(saga_id)
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                    if not waiters:
                        del self._waiters[saga_id]
        return woken if isinstance(woken, SagaRecord) else None

    # -- admin actions -------------------------------------------------------------------------

    async def cancel(self, saga_id: str) -> SagaRecord:
        """Cancel a saga: it stops before its next step and compensates. Returns the saga only
        when the cancel is recorded *and will take effect*.

        Raises ``CancelRefused`` (an ``InvalidTransition``; ``reason`` says why) when it would
        not: the saga has finished, is already compensating, or has started the last step a
        cancel can stop before (its pivot, or its last compensatable step). The refusal is
        recorded in its history (``cancel_refused``). The store decides atomically with the
        runner, which starts each such step only if no cancel is recorded. An engine that does
        not know the saga's definition can only cancel a saga that has not started a step.
        """
        record = await self.get(saga_id)
        saga = self._lookup(record.name, record.version)
        until = None if saga is None else last_cancellable(saga)
        now = self.clock.now()
        record = await self.store.request_cancel(
            saga_id, Event(at=now, type=EventType.CANCEL_REQUESTED), now, until=until
        )
        run = self._runs.get(saga_id)
        if run is not None:
            run.cancel_requested = True
        elif self.execute and saga is not None:
            await self.resume(saga_id)
        elif record.waiting_for is not None:
            await self._parked.due_now(record)
        # Otherwise the engine holding the lease learns of it when it renews its leases, or
        # whichever engine claims the saga next finds the flag in the record.
        return record

    async def retry(self, saga_id: str) -> None:
        """Resume a FAILED saga: its failed compensation, or its failed step past the pivot.

        An engine that knows the definition and executes drives it at once; otherwise (an admin
        CLI, an API-only process) the saga is handed back, unowned, for a worker to claim."""
        record = await self.get(saga_id)
        if record.status is not SagaStatus.FAILED:
            raise InvalidTransition(
                f"saga {saga_id} is {record.status}: only FAILED sagas can be retried"
            )
        saga = self._lookup(record.name, record.version)
        here = self.execute and saga is not None
        now = self.clock.now()
        taken = await self.store.acquire(
            saga_id,
            self.owner_id,
            now=now,
            lease_seconds=self.lease_seconds,
            statuses=[SagaStatus.FAILED],
            event=Event(at=now, type=EventType.RETRY_REQUESTED),
        )
        if taken is None:
            raise InvalidTransition(f"saga {saga_id} is being retried by another engine")
        # The rule reads why it compensated from the history (``taken`` has none).
        taken.history = record.history
        change = retry_requested(taken, release_lease=not here)
        await self.store.commit(saga_id, self.owner_id, change, now)
        apply_change(taken, change, now)
        if here:
            assert saga is not None
            self._spawn(saga, taken, reason=ClaimReason.RETRIED)

    async def resume(self, saga_id: str) -> bool:
        """Take over one active saga if nobody holds a live lease on it; True if taken."""
        return await self._recovery.resume(saga_id)

    async def recover(self, *, include_own: bool = False) -> int:
        """One recovery pass: claim sagas whose lease expired and resume them. Returns how many
        were taken. Sagas of definitions this engine does not know are left for one that does."""
        return await self._recovery.recover(include_own=include_own)

    def wake(self) -> None:
        """Run the next recovery pass now (a store notification says there is work)."""
        self._recovery.wake()

    # -- remote steps and waits: the outbox relay, replies, signals ----------------------------

    async def flush_outbox(self) -> None:
        """Wait until the messages the relay has published are deleted from the outbox."""
        await self._relay.flush()

    async def relay_outbox(self, *, older_than: float | None = None) -> int:
        """One sweep of the relay: publish what the outbox still holds (written before a crash,
        or whose publish failed), oldest first, and delete it; return how many were sent.
        ``older_than`` defaults to a few seconds ago, leaving the runs' own fast path alone."""
        if not self._parks:
            return 0
        return await self._relay.sweep(older_than=older_than)

    async def deliver(self, reply: Reply) -> bool:
        """Apply a participant's reply to the saga waiting for it and drive the saga on; True
        if applied. A reply the saga no longer waits for (a duplicate, a late one, one for a
        saga another engine has moved on) is ignored. Message transports call this (through
        ``on_reply``); tests and other transports may call it directly."""
        return await self._parked.deliver(reply)

    async def signal(
        self,
        saga_id: str,
        name: str,
        payload: Any = None,
        *,
        signal_id: str | None = None,
        error: str | None = None,
    ) -> SignalReceipt:
        """Deliver the signal ``name`` to a saga waiting for it (``Saga.wait``): ``payload``
        becomes the wait step's output; ``error`` fails the step instead (it compensates).

        Durable once this returns: recorded in the saga's log, with ``signal_id``, in the write
        that applies it (this engine drives the saga on at once) or, on an engine that does not
        run it (``execute=False``, or its definition unknown here), that hands it to whichever
        engine does. Delivering the same ``signal_id`` again changes nothing (``duplicate``).

        Raises ``SagaNotFound``; ``NotWaiting`` (an ``InvalidTransition``) when the saga does
        not wait for this signal (finished, waiting for something else, or still running the
        steps before its wait after ``lease_seconds``); ``InvalidInput`` when the payload does
        not fit the wait's ``reply`` type."""
        return await self._parked.signal(saga_id, name, payload, signal_id=signal_id, error=error)

    async def list_waiting(self, prefix: str = "", *, limit: int = 50, offset: int = 0) -> Page:
        """Parked sagas whose ``waiting_for`` starts with ``prefix`` ("signal:payment_confirmed",
        "signal:", "timer", "reply:"), soonest due first."""
        return await self.store.list_waiting(prefix=prefix, limit=limit, offset=offset)

    # -- internals ----------------------------------------------------------------------------

    def _spawn(
        self,
        saga: Saga,
        record: SagaRecord,
        prewritten: bool = False,
        reason: ClaimReason = ClaimReason.RECOVERED,
        carry: Change | None = None,
        committed: asyncio.Future[None] | None = None,
    ) -> None:
        """``committed``: resolved once the run's first write (carrying ``carry``) is durable,
        failed if the run ends without one."""
        record.definition = saga
        hooks = self._hooks
        if hooks is not None:
            hooks.after_claim(record, reason)
        # Positional (once per saga): saga, record, store, owner, clock, listener, prewritten,
        # hooks, dispatcher, relay, carry, shared.
        run = SagaRun(
            saga,
            record,
            self.store,
            self.owner_id,
            self.clock,
            self._first_commit(committed) if committed else self._listener(),
            prewritten,
            hooks,
            self.transport,
            self._relay.relay if self._parks else None,
            carry,
            prewritten and self.store.shares_records,  # started here: see running_record
        )
        self._runs[record.id] = run
        if committed is not None:
            self._committing[record.id] = committed
        # _drive drops the run (and so its task) from _runs itself when it ends: a done callback
        # would cost a loop callback (a Handle, a turn of the loop) per saga.
        # The Task built here (what loop.create_task does, without its two Python frames: ~2k
        # instructions a saga), unless the loop has a task factory, which then builds it.
        loop = _get_running_loop()
        if loop.get_task_factory() is None:  # named by the saga's id: "Task-N" is formatted
            run.task = _Task(self._drive(run), loop=loop, name=record.id)
        else:
            run.task = loop.create_task(self._drive(run), name=record.id)

    def _listener(self) -> CommitListener | None:
        return self._notify if self._listeners else None

    def _first_commit(self, committed: asyncio.Future[None]) -> CommitListener:
        inner = self._listener()

        def listener(record: SagaRecord, change: Change) -> None:
            if not committed.done():
                committed.set_result(None)
            if inner is not None:
                inner(record, change)

        return listener

    def _notify(self, record: SagaRecord, change: Change) -> None:
        for listener in self._listeners:
            try:
                listener(record, change)
            except Exception:  # an observer must never break the saga it observes
                log.exception("saga listener failed")

    async def _drive(self, run: SagaRun) -> None:
        saga_id = run.record.id
        stopped = "engine closing"  # why it is left unfinished, for the hooks
        lost: LeaseLost | None = None
        try:
            await run.drive()
        except LeaseLost as exc:  # a TakeConflict on its first write: taken elsewhere first
            stopped, lost = "lease lost", exc
            level = logging.DEBUG if isinstance(exc, TakeConflict) else logging.WARNING
            log.log(level, "saga %s: lease lost to another engine; stopped driving it", saga_id)
        except Exception:  # (not CancelledError: a BaseException)
            # The log could not be written (or a bug): leave the saga where the log says it is
            # and try again from the log on the next recovery pass.
            stopped = "stopped by an error; resumes from the log"
            log.exception("saga %s: stopped; will resume from the log", saga_id)
            self._recovery.orphans.add(saga_id)
        finally:
            finished = run.record.status in TERMINAL  # (is_terminal: a property call more)
            if run.hooks is not None and finished:
                run.hooks.on_finish(run.record)
            elif run.hooks is not None and not run.parked:
                run.hooks.on_release(run.record, stopped)
            # get and del, not dict.pop(key, None): compiled, pop is a generic method call.
            if self._runs.get(saga_id) is run:  # (its task's one strong reference: see _runs)
                del self._runs[saga_id]
            if saga_id in self._committing:
                committed = self._committing[saga_id]
                del self._committing[saga_id]
                if not committed.done():
                    committed.set_exception(lost or StoreError(f"saga {saga_id}: {stopped}"))
            if finished:
                self._answer_waiters(saga_id, run.record, run.hands_over_record)
            elif saga_id in self._waiters:  # parked (a reply here wakes them again), or stopped
                waiters = self._waiters[saga_id]
                del self._waiters[saga_id]
                for future in waiters:
                    if not future.done():
                        future.set_result(PARKED_HERE if run.parked else None)

    def _answer_waiters(self, saga_id: str, record: SagaRecord, handed: bool = False) -> None:
        """Each waiter gets a copy of ``record`` without its history; or, ``handed`` (nothing
        holds it but the run that finished, see ``SagaRun.hands_over_record``) and one waiter,
        the record itself, its history emptied: a copy less a saga (~1.5k instructions)."""
        waiters = self._waiters.get(saga_id)
        if waiters is None:
            return
        del self._waiters[saga_id]
        if handed and len(waiters) == 1:
            future = waiters[0]
            if not future.done():
                record.history = []
                future.set_result(record)
            return
        for future in waiters:
            if not future.done():
                future.set_result(record.copy(history=False))
