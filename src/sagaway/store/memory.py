"""A real in-memory saga log: the full contract, no durability. For tests and demos.

Single event loop, no awaits inside an operation: each method is atomic by construction.
A finished saga is kept compact (``_memory_commit.Finished``): a read builds its record from it,
a write to it puts the record back first (``_owned``) and keeps it compact again after.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar, cast

from sagaway.errors import (
    CancelRefused,
    LeaseLost,
    SagaNotFound,
)
from sagaway.state import (
    PRUNABLE_STATUSES,
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaRecord,
    SagaStatus,
    cancel_refusal,
    record_from_new,
    refused_cancel,
)
from sagaway.store._codec import storable_text
from sagaway.store._memory_commit import (
    Finished,
    MemoryCommit,
    MemoryCreate,
    expand,
    keep,
)
from sagaway.store.base import (
    OutboxStore,
    Page,
    PruningStore,
    TakingStore,
    TransactionalStore,
    waiting_order,
)

T = TypeVar("T")


class MemoryStore(OutboxStore, TransactionalStore, PruningStore, TakingStore):
    _kind = "memory"
    # Nothing to connect or release (no _open/_close), so operations need no open store and a
    # closed one opens again: tests hand one store from engine to engine to simulate restarts.
    _reopenable = True
    # An engine drives the sagas it starts here with the record kept here (``running_record``):
    # one record built per saga instead of two, and each change applied once instead of twice.
    shares_records = True

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._sagas: dict[str, SagaRecord | Finished] = {}
        self._keys: dict[str, str] = {}
        # Insertion order is not the outbox order (a message written again keeps its place in
        # a dict): outbox_pending sorts by (created_at, id).
        self._outbox: dict[str, OutboxMessage] = {}
        self._commits = MemoryCommit(self._sagas, self._outbox)
        self._creates = MemoryCreate(self._sagas, self._keys)
        # The writes as plain calls (see SagaStore.inline_commit), unless a subclass overrides
        # them: its own are the writes then.
        if type(self).commit is MemoryStore.commit:
            self.inline_commit = self._commits
        # (inline_create hands the engine the record running_record would: not when a
        # subclass overrides either)
        kind = type(self)
        if kind.create is MemoryStore.create and kind.running_record is MemoryStore.running_record:
            self.inline_create = self._creates

    def __setattr__(self, name: str, value: Any) -> None:
        # This instance's commit or create replaced (``store.commit = spy``, a test's): the
        # engine's plain calls would go around the replacement, so from now on there are none.
        if name == "commit":
            object.__setattr__(self, "inline_commit", None)
        elif name in ("create", "running_record"):
            object.__setattr__(self, "inline_create", None)
        object.__setattr__(self, name, value)

    async def create(self, new: NewSaga) -> tuple[str, bool]:
        saga_id, record = self._creates.create(new)
        return saga_id, record is not None

    def running_record(self, new: NewSaga) -> SagaRecord:
        if self.shares_records:
            record = self._sagas[new.id]
            if not isinstance(record, Finished):  # (it was created a moment ago: never is)
                return record
        return record_from_new(new)

    @staticmethod
    def _copy(record: SagaRecord, history: bool = True) -> SagaRecord:
        """What a read returns: a copy, without the definition an engine may have attached to
        the record it drives (``running_record``): a bare store read has none."""
        copy = record.copy(history=history)
        copy.definition = None
        return copy

    @classmethod
    def _read(cls, entry: SagaRecord | Finished, history: bool = True) -> SagaRecord:
        if isinstance(entry, Finished):
            return expand(entry, history)
        return cls._copy(entry, history)

    @classmethod
    def _listed(cls, entries: Sequence[SagaRecord | Finished]) -> list[SagaRecord]:
        """A page of a listing: the records without their steps and history."""
        items = [cls._read(entry, False) for entry in entries]
        for item in items:
            item.steps = {}
        return items

    def _owned(self, saga_id: str, owner: str | None) -> SagaRecord:
        """The saga's record to write to (the caller ``keep``s it after, compact if finished)."""
        entry = self._sagas.get(saga_id)
        if entry is None:
            raise SagaNotFound(saga_id)
        if owner is not None and entry.owner != owner:
            raise LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
        if isinstance(entry, Finished):
            record = expand(entry)
            self._sagas[saga_id] = record
            return record
        return entry

    async def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        self._commits.commit(saga_id, owner, change, at)

    async def create_with(self, new: NewSaga, prepare: Callable[[Any], Any]) -> tuple[str, bool]:
        # The key first: with nothing to roll back, ``prepare`` runs only for a saga created.
        if new.idempotency_key is not None:
            existing = self._keys.get(new.idempotency_key)
            if existing is not None:
                return existing, False
        new.input = prepare(None)
        return await self.create(new)

    async def run_in_transaction(self, fn: Callable[[Any], T], *, rows_only: bool = False) -> T:
        # Nothing to roll back: the memory store has no connection to hand over.
        return fn(None)

    async def outbox_pending(
        self, *, limit: int, older_than: float | None = None
    ) -> list[OutboxMessage]:
        messages = [
            m for m in self._outbox.values() if older_than is None or m.created_at < older_than
        ]
        messages.sort(key=lambda m: (m.created_at, m.id))
        return messages[: max(limit, 0)]

    async def outbox_delete(self, ids: Collection[str]) -> int:
        return sum(self._outbox.pop(i, None) is not None for i in ids)

    async def outbox_count(self) -> int:
        return len(self._outbox)

    async def list_waiting(self, *, prefix: str = "", limit: int = 50, offset: int = 0) -> Page:
        matches = [
            r
            for r in self._sagas.values()
            if r.waiting_for is not None and r.waiting_for.startswith(prefix)
        ]
        # (waiting_order reads parked_until and id, which a Finished has too)
        matches.sort(key=cast(Callable[[SagaRecord | Finished], tuple[float, str]], waiting_order))
        return Page(items=self._listed(matches[offset : offset + limit]), total=len(matches))

    async def peek(self, saga_id: str) -> SagaRecord | None:
        return await self.load(saga_id, history=False)

    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        entry = self._sagas.get(saga_id) if storable_text(saga_id) else None
        return None if entry is None else self._read(entry, history)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        matches = [
            r
            for r in self._sagas.values()
            if (status is None or r.status == status) and (name is None or r.name == name)
        ]
        matches.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return Page(items=self._listed(matches[offset : offset + limit]), total=len(matches))

    async def counts(self) -> dict[SagaStatus, int]:
        return dict(Counter(r.status for r in self._sagas.values()))

    def _take(self, record: SagaRecord, owner: str, now: float, lease_seconds: float) -> None:
        record.owner = owner
        record.lease_expires_at = now + lease_seconds
        record.updated_at = now
        record.fence += 1

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
        wanted = set(definitions)
        claimed: list[SagaRecord] = []
        for record in self._sagas.values():
            if len(claimed) >= limit:
                break
            if isinstance(record, Finished):
                continue  # (never active)
            if not record.status.is_active or (record.name, record.version) not in wanted:
                continue
            if record.parked_until is not None and record.parked_until > now:
                continue  # parked: a reply takes it with acquire, or claim once it times out
            free = (
                record.owner is None
                or record.lease_expires_at is None
                or record.lease_expires_at < now
                or (include_own and record.owner == owner)
            )
            if free:
                self._take(record, owner, now, lease_seconds)
                record.history.append(Event(at=now, type=EventType.SAGA_CLAIMED, detail=owner))
                claimed.append(self._copy(record, False))
        return claimed

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
        entry = self._sagas.get(saga_id)
        if entry is None:
            raise SagaNotFound(saga_id)
        live_lease = (
            entry.owner not in (None, owner)
            and entry.lease_expires_at is not None
            and entry.lease_expires_at >= now
        )
        if entry.status not in statuses or live_lease:
            return None
        record = self._owned(saga_id, None)
        self._take(record, owner, now, lease_seconds)
        if event is not None:
            record.history.append(event)
        keep(self._sagas, record)
        return self._copy(record, False)

    async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> list[str]:
        cancelled = []
        for record in self._sagas.values():
            if isinstance(record, Finished):
                continue  # (never active)
            if record.owner == owner and record.status.is_active:
                record.lease_expires_at = now + lease_seconds
                if record.cancel_requested:
                    cancelled.append(record.id)
        return cancelled

    async def request_cancel(
        self, saga_id: str, event: Event, at: float, *, until: str | None = None
    ) -> SagaRecord:
        record = self._owned(saga_id, None)
        started = [name for name, phase in record.steps if phase is Phase.FORWARD]
        reason = cancel_refusal(saga_id, record.status, record.cancel_requested, started, until)
        if reason is not None:
            record.history.append(refused_cancel(event, reason))
            keep(self._sagas, record)
            raise CancelRefused(reason)
        if not record.cancel_requested:
            record.cancel_requested = True
            record.history.append(event)
            record.updated_at = at
            record.fence += 1
        keep(self._sagas, record)
        return self._copy(record)

    # -- retention ---------------------------------------------------------------------------

    @staticmethod
    def _prunable(record: SagaRecord | Finished, finished_before: float) -> bool:
        return (
            record.status in PRUNABLE_STATUSES
            and not record.pinned
            and record.updated_at < finished_before
        )

    async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
        # A scan: the memory store holds what a test or a demo makes, not a year of sagas.
        found = [r for r in self._sagas.values() if self._prunable(r, finished_before)]
        found.sort(key=lambda r: (r.updated_at, r.id))
        return [r.id for r in found[: max(limit, 0)]]

    async def prune(self, ids: Collection[str], *, finished_before: float) -> list[str]:
        removed = []
        for saga_id in dict.fromkeys(ids):
            record = self._sagas.get(saga_id)
            if record is None or not self._prunable(record, finished_before):
                continue
            del self._sagas[saga_id]
            if record.idempotency_key is not None:
                self._keys.pop(record.idempotency_key, None)
            for message_id in [m.id for m in self._outbox.values() if m.saga_id == saga_id]:
                del self._outbox[message_id]
            removed.append(saga_id)
        return removed

    async def set_pinned(self, saga_id: str, pinned: bool) -> SagaRecord:
        record = self._owned(saga_id, None)
        record.pinned = pinned
        keep(self._sagas, record)
        return self._copy(record, False)
