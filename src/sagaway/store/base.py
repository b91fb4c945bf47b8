"""The saga log port. Every backend (memory, SQLite, PostgreSQL, Redis) implements this class.

The contract, checked for every backend by ``sagaway.testing.SagaStoreContract``:

* ``create`` is atomic with the idempotency key: a second create with the same key creates
  nothing and returns the first saga's id.
* ``commit`` applies a whole ``Change`` atomically and durably before it returns, and only while
  ``owner`` still holds the saga's lease (else ``LeaseLost``): that fencing is what makes a saga
  run by one engine at a time even when a slow engine's lease was taken over.
* ``claim`` hands unowned or lease-expired active sagas to one owner at a time.
* Times are supplied by the caller (the engine's clock); stores never read a clock themselves.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

from sagaway.errors import SagaNotFound, StoreError
from sagaway.state import (
    ACTIVE_STATUSES,
    Change,
    Event,
    NewSaga,
    OutboxMessage,
    SagaRecord,
    SagaStatus,
    record_from_new,
)

T = TypeVar("T")
InlineCommit = Callable[[str, "str | None", Change, float], None]
"""``commit(saga_id, owner, change, at)`` as a plain call (``SagaStore.inline_commit``)."""
InlineCreate = Callable[[NewSaga], "tuple[str, SagaRecord | None]"]
"""``create(new)`` as a plain call (``SagaStore.inline_create``): the id, and, when it created
the saga, the record ``running_record`` would return for it (None: the key was used already)."""

_State = Literal["new", "open", "closing", "closed"]
_STRANDED_SCAN = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a listing, newest first."""

    items: list[SagaRecord]
    total: int


class SagaStore(ABC):
    """Abstract saga log. Records returned are copies: mutating them never changes the store."""

    url: str = ""

    # What error messages call the store ("SQLite store 'sqlite:///x.db' is not open"), so an
    # application holding several stores can tell which one refused.
    _kind: str = "saga"
    # A closed store refuses to open again: its connections and tasks are gone, and a second
    # life on the same object would hide a use-after-close. A store with nothing to release
    # (memory) may allow it.
    _reopenable: bool = False
    # new -> open -> closing -> closed. Class-level defaults, like ``url``, so that a store that
    # never calls ``SagaStore.__init__`` still gets the lifecycle.
    _state: _State = "new"
    _lifecycle: asyncio.Lock | None = None
    # True when ``running_record`` hands out the record the store itself keeps, and ``commit``
    # applies every change to it: the engine then drives a saga it just created with that
    # record and does not apply its changes a second time (see ``running_record``).
    shares_records: bool = False

    def running_record(self, new: NewSaga) -> SagaRecord:
        """The record an engine drives a saga it has just created (``new``) with.

        By default a record of the engine's own, built from ``new``. A store with
        ``shares_records`` (memory) returns the record it keeps: the engine's run then mutates
        it only through ``commit``, and never hands it out (a waiter gets a copy), so every
        record the store returns is still a copy."""
        return record_from_new(new)

    # ``commit`` and ``create`` as plain calls, for a store whose writes never suspend
    # (memory): the same writes with the same meaning, without a coroutine built and driven
    # for each (the runner reads ``inline_commit`` once a run, the engine ``inline_create``
    # once a start). None (the default) when the store has none, or when its ``commit`` or
    # ``create`` is overridden or replaced (a test's spy): those are the writes then.
    # ``inline_commit`` keeps no reference to the Change or its lists once it returns (it may
    # keep their rows, events and messages): the runner builds its next transition in it.
    inline_commit: InlineCommit | None = None
    inline_create: InlineCreate | None = None

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent.

        The guard lives here so every backend answers a second open, or an open after close,
        the same way; backends implement ``_open``. The lock makes a concurrent ``close`` wait
        for an ``open`` in progress instead of releasing what is half set up.
        """
        async with self._lifecycle_lock():
            if self._state == "open":
                return
            if self._state != "new" and not self._reopenable:
                raise StoreError(f"{self._kind} store {self._where} is closed")
            await self._open()
            self._state = "open"

    async def close(self) -> None:
        """Flush pending writes and release connections. Idempotent.

        The state is "closing" while ``_close`` runs: operations are refused from then on, and
        a backend's flusher knows to drain what is queued and stop.
        """
        async with self._lifecycle_lock():
            if self._state != "open":
                self._state = "closed"
                return
            self._state = "closing"
            await self._close()
            self._state = "closed"

    async def _open(self) -> None:  # noqa: B027 - optional hook
        """Connect and set up; runs under the lifecycle lock while the store is new (or closed,
        if reopenable). If it raises, the state is unchanged and ``open`` may be tried again."""

    async def _close(self) -> None:  # noqa: B027 - optional hook
        """Drain and release what ``_open`` set up; runs under the lifecycle lock while the
        state is "closing"."""

    def _lifecycle_lock(self) -> asyncio.Lock:
        if self._lifecycle is None:  # made on first use: see the class-level defaults
            self._lifecycle = asyncio.Lock()
        return self._lifecycle

    @property
    def _where(self) -> str:
        """How error messages name the store (PostgreSQL names its host, port and schema)."""
        return repr(self.url)

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    def _not_open(self) -> StoreError:
        return StoreError(f"{self._kind} store {self._where} is not open")

    def _check_open(self) -> None:
        """Refuse an operation unless the store is open: before ``open`` or once ``close`` has
        begun, the connections and flusher it needs are not (or no longer) there."""
        if self._state != "open":
            raise self._not_open()

    def on_work(self, callback: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Ask to be called (on the event loop) when another process may have made work for
        this engine: a saga queued as PENDING, a lease released. Stores with notifications
        (PostgreSQL LISTEN/NOTIFY, Redis pub/sub) implement it so idle workers react at once;
        without it an engine finds such work on its next recovery pass."""

    async def __aenter__(self) -> SagaStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ``create`` and ``commit`` return an awaitable, not necessarily a coroutine: a store may
    # queue the write when called (SQLite does, for a coroutine less a write), so callers
    # await where they call and never hand the result to ``create_task``. Errors come out of
    # the await either way.

    @abstractmethod
    def create(self, new: NewSaga) -> Awaitable[tuple[str, bool]]:
        """Insert a saga with its first steps and events.

        Returns ``(saga_id, True)``, or ``(existing_id, False)`` when ``new.idempotency_key`` was
        already used, in which case nothing is written.
        """

    @abstractmethod
    def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> Awaitable[None]:
        """Apply ``change`` atomically and durably.

        With an ``owner``, only while that owner holds the lease (else ``LeaseLost``); ``None``
        is for admin writes on sagas nobody owns. With ``change.unless_cancelled``, only while
        no cancel is requested (else ``CancelPending``). Raises ``SagaNotFound`` for an unknown
        id. Nothing is written when it raises.
        """

    @abstractmethod
    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        """One saga with its step rows and, unless ``history=False``, its events in order."""

    @abstractmethod
    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """Sagas newest first (created_at, then id), without steps or history."""

    @abstractmethod
    async def counts(self) -> dict[SagaStatus, int]:
        """How many sagas are in each status (for metrics and dashboards)."""

    @abstractmethod
    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        definitions: Sequence[tuple[str, int]],
        limit: int,
        include_own: bool = False,
    ) -> list[SagaRecord]:
        """Take the lease on up to ``limit`` active sagas of the given (name, version)s.

        Eligible: status PENDING, RUNNING or COMPENSATING, and no owner or an expired lease (or,
        with ``include_own``, already owned by ``owner``: an engine restarting under the same id
        takes its sagas back at once). Each claimed saga gets a SAGA_CLAIMED event. Returns them
        fully loaded (steps, no history needed). Two concurrent claims never return the same saga.
        """

    @abstractmethod
    async def acquire(
        self,
        saga_id: str,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        statuses: Sequence[SagaStatus],
        event: Event | None = None,
    ) -> SagaRecord | None:
        """Take the lease on one saga if its status is in ``statuses`` and nobody else holds a
        live lease; record ``event`` with it. Returns the loaded saga, or None if not taken.
        Raises ``SagaNotFound`` for an unknown id."""

    @abstractmethod
    async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> list[str]:
        """Extend every active lease ``owner`` holds; return the ids among them whose
        cancellation was requested (how a cancel reaches the engine running the saga)."""

    @abstractmethod
    async def request_cancel(
        self, saga_id: str, event: Event, at: float, *, until: str | None = None
    ) -> SagaRecord:
        """Flag the saga for cancellation and record ``event``, if the cancel will take effect
        (``state.cancel_refusal``, decided atomically with the write); returns the saga.

        ``until`` is the last step a cancel can stop before (None: only a saga with no step
        started can be cancelled). A cancel already requested is accepted again, writing
        nothing. Otherwise records a ``cancel_refused`` event with the reason and raises
        ``CancelRefused`` (an ``InvalidTransition``); ``SagaNotFound`` for an unknown id."""

    async def list_waiting(self, *, prefix: str = "", limit: int = 50, offset: int = 0) -> Page:
        """Parked sagas (``waiting_for`` set) whose ``waiting_for`` starts with ``prefix``,
        soonest ``parked_until`` first (then id), without steps or history.

        This default pages through ``list_sagas`` (at most ``_STRANDED_SCAN`` sagas per
        status); the stores shipped with sagaway answer it from an index."""
        found: list[SagaRecord] = []
        for status in ACTIVE_STATUSES:
            scanned = 0
            while scanned < _STRANDED_SCAN:
                page = await self.list_sagas(status=status, limit=500, offset=scanned)
                found += [
                    saga
                    for saga in page.items
                    if saga.waiting_for is not None and saga.waiting_for.startswith(prefix)
                ]
                scanned += len(page.items)
                if len(page.items) < 500:
                    break
        found.sort(key=waiting_order)
        return Page(items=found[offset : offset + limit], total=len(found))

    async def stranded(
        self, *, now: float, owner: str, known: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """Active sagas that no engine drives (no owner, an expired lease, or ``owner``'s own
        from a previous life) whose (name, version) is not in ``known``, counted by definition.

        A diagnostic, run once a minute: this default pages through ``list_sagas`` (at most
        ``_STRANDED_SCAN`` sagas per status); SQL stores answer it from indexes, Redis from its
        claim indexes per definition."""
        found: Counter[tuple[str, int]] = Counter()
        for status in ACTIVE_STATUSES:
            offset = 0
            while offset < _STRANDED_SCAN:
                page = await self.list_sagas(status=status, limit=500, offset=offset)
                for saga in page.items:
                    key = (saga.name, saga.version)
                    if key not in known and (
                        saga.owner is None
                        or saga.owner == owner
                        or saga.lease_expires_at is None
                        or saga.lease_expires_at < now
                    ):
                        found[key] += 1
                offset += len(page.items)
                if len(page.items) < 500:
                    break
        return dict(found)

    async def find_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` saga ids that start with ``prefix`` (the admin CLI takes any unique
        prefix of an id). This default pages through ``list_sagas``; SQL stores use an index."""
        found: list[str] = []
        offset = 0
        while True:
            page = await self.list_sagas(limit=1000, offset=offset)
            found += [saga.id for saga in page.items if saga.id.startswith(prefix)]
            offset += len(page.items)
            if len(found) >= limit or len(page.items) < 1000:
                return found[:limit]

    async def get(self, saga_id: str, *, history: bool = True) -> SagaRecord:
        """Like ``load``, but an unknown id raises ``SagaNotFound``."""
        record = await self.load(saga_id, history=history)
        if record is None:
            raise SagaNotFound(saga_id)
        return record


def waiting_order(saga: SagaRecord) -> tuple[float, str]:
    """How ``list_waiting`` orders parked sagas: soonest ``parked_until`` first, then id."""
    return (saga.parked_until if saga.parked_until is not None else float("inf"), saga.id)


class OutboxStore(SagaStore):
    """Capability tier: a transactional outbox in the saga log.

    ``commit`` writes ``change.outbox`` in the same atomic write as the transition (nothing of
    it when the commit raises), the way eventsourcing's ``ProcessRecorder`` adds tracking rows
    to its ``ApplicationRecorder``'s transaction. A relay reads ``outbox_pending``, publishes,
    then ``outbox_delete``s what the broker confirmed: every message is published at least
    once, and its ``id`` lets the receiver drop the repeats. A message written again under an
    id still pending replaces it (one row per id). Checked for every backend by
    ``sagaway.testing.OutboxStoreContract``.
    """

    @abstractmethod
    async def outbox_pending(
        self, *, limit: int, older_than: float | None = None
    ) -> list[OutboxMessage]:
        """Up to ``limit`` messages not yet deleted, oldest first (created_at, then id); with
        ``older_than``, only those created before that time (the relay's sweep for messages
        whose fast-path publish a crash cut short)."""

    @abstractmethod
    async def outbox_delete(self, ids: Collection[str]) -> int:
        """Delete the messages with these ids (published and confirmed); unknown ids are
        ignored. Returns how many were deleted."""

    @abstractmethod
    async def outbox_count(self) -> int:
        """How many messages wait to be published (a gauge)."""


class TakingStore(SagaStore):
    """Capability tier: take a saga in the write that moves it on (``Change.take``).

    A parked saga woken by a signal or a reply is read with ``peek`` (no write), the rules
    decide from that read, and the decision's write takes the lease itself: ``commit`` with a
    ``change.take`` applies only if the row's ``fence`` still equals ``take.fence`` and no
    other owner holds a live lease at ``at``; it then leases the saga to ``owner`` until
    ``take.until`` and applies the change, all in one atomic, durable write (the change may
    park the saga again or release the lease: the take comes first). Otherwise it raises
    ``TakeConflict`` and writes nothing (``SagaNotFound`` for an unknown id; ``CancelPending``
    when only ``unless_cancelled`` stands in the way). Every write of the saga's row changes
    its fence, so a conditional write never applies a decision made on a stale read: of two
    engines racing on one read, one wins. Checked for every backend by
    ``sagaway.testing.TakingStoreContract``.
    """

    @abstractmethod
    async def peek(self, saga_id: str) -> SagaRecord | None:
        """The saga with its step rows (no history) and its ``fence``, as fresh as the
        store's writer sees it; writes nothing. None for an unknown id."""


class TransactionalStore(SagaStore):
    """Capability tier: the application may write in the saga log's own transactions.

    ``commit`` runs a Change's ``effects`` (``ctx.atomic()`` writes) inside the transaction
    that records the step's outcome, so they commit if and only if it does; and
    ``run_in_transaction`` runs any function that way on its own. The argument handed to those
    functions is the store's connection (a ``sqlite3.Connection`` for SQLite, None for the
    memory store). Checked by ``sagaway.testing.TransactionalStoreContract``.
    """

    @abstractmethod
    async def run_in_transaction(self, fn: Callable[[Any], T], *, rows_only: bool = False) -> T:
        """Run ``fn(connection)`` in a transaction of the store's own and return its result:
        committed when it returns, rolled back (nothing written) when it raises.

        ``rows_only``: the caller's promise that ``fn`` only reads and writes rows (no schema,
        setting or savepoint statements), which lets a store undo a failure more cheaply; the
        guarantee is the same either way."""

    @abstractmethod
    def create_with(
        self, new: NewSaga, prepare: Callable[[Any], Any]
    ) -> Awaitable[tuple[str, bool]]:
        """``create`` with the application's writes in the same transaction:
        ``prepare(connection)`` runs first (the connection as ``run_in_transaction`` hands
        it), writes what it writes and returns the saga's input, checked and encoded, which
        becomes ``new.input``; then the saga is created. All of it commits or nothing does:
        when ``prepare`` raises, nothing is written and its error is raised (a driver error
        as ``StoreError``); when ``new.idempotency_key`` was used already, ``prepare``'s writes
        are undone (or it is not called) and ``(existing_id, False)`` returned."""

    def shares_database(self, url: str) -> bool:
        """True when the database at ``url`` (an SQLAlchemy URL) is the one this store writes
        in, so an application may put its tables there and write them with
        ``run_in_transaction``."""
        return False


class PruningStore(SagaStore):
    """Capability tier: retention. Finished sagas can be removed, and pinned so they are not.

    Prunable: status SUCCEEDED or COMPENSATED (``state.PRUNABLE_STATUSES``; never an active,
    parked or FAILED saga, which an operator may still retry), not pinned, last written
    (``updated_at``) before the cutoff. ``prune`` removes a saga with everything the log keeps
    for it (step rows, history, outbox messages) in one atomic write per call, so callers keep
    calls small (a few hundred ids) and no write waits long behind one. A pruned saga's
    idempotency key is forgotten with it: a create under that key afterwards starts a new saga.
    Checked for every backend by ``sagaway.testing.PruningStoreContract``.
    """

    @abstractmethod
    async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
        """Ids of up to ``limit`` prunable sagas last written before ``finished_before``,
        oldest first where the store can tell (what ``prune`` would remove; writes nothing)."""

    @abstractmethod
    async def prune(self, ids: Collection[str], *, finished_before: float) -> list[str]:
        """Remove those of ``ids`` that are prunable *now* (checked atomically with the
        delete: a saga pinned or written meanwhile stays), with their steps, events and outbox
        messages. Unknown ids are ignored. Returns the ids removed."""

    async def prune_next(self, *, finished_before: float, limit: int) -> list[str]:
        """Remove up to ``limit`` prunable sagas, oldest first, and return their ids: what
        ``prunable`` then ``prune`` do, in one step where the store can, so that concurrent
        callers (several workers on one log) take disjoint batches instead of all choosing the
        same oldest sagas (PostgreSQL skips the rows another pruner holds)."""
        ids = await self.prunable(finished_before=finished_before, limit=limit)
        return await self.prune(ids, finished_before=finished_before) if ids else []

    @abstractmethod
    async def set_pinned(self, saga_id: str, pinned: bool) -> SagaRecord:
        """Pin (or unpin) a saga of any status; returns it without history. Writes nothing
        else (its ``updated_at`` stays, so an unpinned old saga is prunable at once).
        ``SagaNotFound`` for an unknown id."""
