"""The memory store's writes (``MemoryStore.commit`` and ``create``), on their own so that they are
compiled (DEVELOPERS.md "The compiled build"): it runs for every transition of every saga, and
the store's class, subclassed by tests and of several bases, stays interpreted.

A saga the store keeps is a ``SagaRecord`` while it can still change, and a ``Finished`` from the
commit that finishes it (SUCCEEDED, COMPENSATED, FAILED) on: its row's fields as they were, and
its step rows and events, compiled, packed into one tuple of atomic values (``_memory_packed``:
the collector walks ~14 references a saga instead of ~94, and only once), interpreted, as two
flat lists of their fields (packing costs ~12 us a saga interpreted). A kept record was ~18
objects the garbage collector tracks (the record, its step map, a key tuple and a ``StepRecord``
per step row, its history list, an ``Event`` per event); a listed ``Finished`` is four (its
lists hold enum members, which keeps them tracked). The lists are kept as built, sized to their
fields: copied into tuples they cost ~1.5k instructions a saga more (compiled) for ~20 bytes
less each. In ``engine_throughput``'s workload, 30,000 sagas kept: 17.8 tracked objects a saga
-> 3.0, a full collection 316 -> 86 ms, 3.3 -> 2.5 KB of peak RSS a saga (the lists form).
A pickle of the rows (one untracked bytes value, 1.5 KB a saga) cost 5x as much to build (34k
instructions a saga compiled, this 6.5k; +8% CPU pure at 5,000 sagas); keeping the
``StepRecord`` and ``Event`` objects in tuples cost nothing to build but kept 14.6 tracked
objects a saga.
A write to a finished saga (an operator's retry of a FAILED one, a refused cancel's event, a
pin) puts the record back together first (``expand``); readers build theirs from it. Values are
kept, not copied (the input, outputs, texts): a read gives back the very objects it gave before.
"""

from __future__ import annotations

from typing import Any, Final

from sagaway.errors import (
    CancelPending,
    LeaseLost,
    SagaNotFound,
    TakeConflict,
)
from sagaway.state import (
    Change,
    Event,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    apply_change,
    record_from_new,
)
from sagaway.store._codec import check_change, check_new, run_effects
from sagaway.store._memory_packed import COMPILED, pack, unpack

_SUCCEEDED: Final = SagaStatus.SUCCEEDED
_COMPENSATED: Final = SagaStatus.COMPENSATED
_FAILED: Final = SagaStatus.FAILED
# The fields of a StepRecord and of an Event, in the lists form.
_STEP_FIELDS: Final = 9
_EVENT_FIELDS: Final = 6


class Finished:
    """A finished saga as the memory store keeps it: the saga's row as it was (what scans and
    filters read: same attribute names as ``SagaRecord``'s, so a scan reads either), its input,
    and its step rows and events: packed (``_memory_packed``; ``words``, how many words it
    has) or, interpreted, two lists of their fields (``words`` -1)."""

    __slots__ = (
        "cancel_requested",
        "created_at",
        "deadline_at",
        "error",
        "fence",
        "id",
        "idempotency_key",
        "input",
        "lease_expires_at",
        "name",
        "owner",
        "packed",
        "parked_until",
        "pinned",
        "status",
        "updated_at",
        "version",
        "waiting_for",
        "words",
    )

    def __init__(self, record: SagaRecord, packed: tuple[Any, ...], words: int) -> None:
        self.id, self.name, self.version = record.id, record.name, record.version
        self.status, self.input, self.created_at = record.status, record.input, record.created_at
        self.updated_at, self.idempotency_key = record.updated_at, record.idempotency_key
        self.owner, self.lease_expires_at = record.owner, record.lease_expires_at
        self.deadline_at, self.cancel_requested = record.deadline_at, record.cancel_requested
        self.error, self.waiting_for = record.error, record.waiting_for
        self.parked_until, self.pinned = record.parked_until, record.pinned
        self.fence, self.packed, self.words = record.fence, packed, words


def finish(record: SagaRecord, packed: bool = COMPILED) -> Finished:
    """``record`` as a ``Finished``: its step rows and events packed (``_memory_packed``) if
    ``packed``, else as two flat lists of their fields."""
    if packed:
        value, words = pack(record)
        return Finished(record, value, words)
    # Written into lists made to size: an append costs ~3 times an item set, compiled.
    steps = record.steps
    rows: list[Any] = [None] * (_STEP_FIELDS * len(steps))
    i = 0
    for step in steps.values():
        rows[i] = step.name
        rows[i + 1] = step.phase
        rows[i + 2] = step.status
        rows[i + 3] = step.attempts
        rows[i + 4] = step.output
        rows[i + 5] = step.error
        rows[i + 6] = step.uncertain
        rows[i + 7] = step.started_at
        rows[i + 8] = step.finished_at
        i += _STEP_FIELDS
    history = record.history
    events: list[Any] = [None] * (_EVENT_FIELDS * len(history))
    i = 0
    for event in history:
        events[i] = event.at
        events[i + 1] = event.type
        events[i + 2] = event.step
        events[i + 3] = event.phase
        events[i + 4] = event.attempt
        events[i + 5] = event.detail
        i += _EVENT_FIELDS
    return Finished(record, (rows, events), -1)


def _unlisted(
    lists: tuple[Any, ...], history: bool
) -> tuple[dict[tuple[str, Phase], StepRecord], list[Event]]:
    """The step rows and events of a ``Finished`` that keeps them as lists."""
    rows: list[Any] = lists[0]
    steps: dict[tuple[str, Phase], StepRecord] = {}
    for i in range(0, len(rows), _STEP_FIELDS):
        name: str = rows[i]
        phase: Phase = rows[i + 1]
        steps[(name, phase)] = StepRecord(
            name,
            phase,
            rows[i + 2],
            rows[i + 3],
            rows[i + 4],
            rows[i + 5],
            rows[i + 6],
            rows[i + 7],
            rows[i + 8],
        )
    timeline: list[Event] = []
    if history:
        events: list[Any] = lists[1]
        for i in range(0, len(events), _EVENT_FIELDS):
            timeline.append(
                Event(
                    events[i],
                    events[i + 1],
                    events[i + 2],
                    events[i + 3],
                    events[i + 4],
                    events[i + 5],
                )
            )
    return steps, timeline


def expand(entry: Finished, history: bool = True) -> SagaRecord:
    """The record ``entry`` was made of: a new one, equal to it field for field (no
    ``definition``, as a store read has none); its history left empty unless ``history``."""
    if entry.words >= 0:
        steps, timeline = unpack(entry.packed, entry.words, entry.created_at, history)
    else:
        steps, timeline = _unlisted(entry.packed, history)
    return SagaRecord(
        entry.id,
        entry.name,
        entry.version,
        entry.status,
        entry.input,
        entry.created_at,
        entry.updated_at,
        entry.idempotency_key,
        entry.owner,
        entry.lease_expires_at,
        entry.deadline_at,
        entry.cancel_requested,
        entry.error,
        steps,
        timeline,
        entry.waiting_for,
        entry.parked_until,
        entry.pinned,
        None,
        entry.fence,
    )


def keep(sagas: dict[str, SagaRecord | Finished], record: SagaRecord) -> None:
    """Keep ``record`` in ``sagas``: as a ``Finished`` if it is finished."""
    status = record.status
    if status is _SUCCEEDED or status is _COMPENSATED or status is _FAILED:
        sagas[record.id] = finish(record)
    else:
        sagas[record.id] = record


class MemoryCreate:
    """``MemoryStore.inline_create`` (and its ``create``), callable as any ``InlineCreate``: a
    compiled class the engine calls natively, as ``MemoryCommit`` is for the runner."""

    def __init__(self, sagas: dict[str, SagaRecord | Finished], keys: dict[str, str]) -> None:
        self.sagas, self.keys = sagas, keys

    def __call__(self, new: NewSaga) -> tuple[str, SagaRecord | None]:
        return self.create(new)

    def create(self, new: NewSaga) -> tuple[str, SagaRecord | None]:
        """Record ``new`` (its key in ``keys``): ``(id, the record kept)``; or, its
        idempotency key used already, ``(that saga's id, None)`` having changed nothing. (The
        record is what ``MemoryStore.running_record`` hands an engine: see ``inline_create``.)"""
        check_new(new)  # what another store could not keep, this one refuses too
        if new.idempotency_key is not None:
            existing = self.keys.get(new.idempotency_key)
            if existing is not None:
                return existing, None
            self.keys[new.idempotency_key] = new.id
        record = self.sagas[new.id] = record_from_new(new)
        return new.id, record


class MemoryCommit:
    """``MemoryStore.inline_commit`` (and its ``commit``): a change applied to the store's
    dicts, callable as any ``InlineCommit``. A compiled class rather than a ``partial``: the
    runner calls ``commit`` natively, where the partial was a generic call and an argument
    parse every transition (~1.4k instructions a saga, compiled). It keeps no ``Change`` it is
    given, nor, once a saga is finished, its record (``SagaRun.hands_over_record`` relies on
    both)."""

    def __init__(
        self, sagas: dict[str, SagaRecord | Finished], outbox: dict[str, OutboxMessage]
    ) -> None:
        self.sagas, self.outbox = sagas, outbox

    def __call__(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        self.commit(saga_id, owner, change, at)

    def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        """Apply ``change`` to the saga's record in ``sagas`` and its messages to ``outbox``,
        or raise (SagaNotFound, LeaseLost, TakeConflict, CancelPending, EffectFailed,
        EffectRefused) having changed nothing."""
        if not change.checked or change.outbox or change.park is not None:
            check_change(change)  # (what it checks of a runner's checked change is only these)
        take = change.take
        sagas = self.sagas
        entry = sagas.get(saga_id)
        if entry is None:
            raise SagaNotFound(saga_id)
        # Finished: written again (an operator's retry), so a record again. No run holds it:
        # the record a run shares (``running_record``) is replaced only by its last commit.
        record = expand(entry) if isinstance(entry, Finished) else entry
        if take is None and owner is not None and record.owner != owner:
            raise LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
        if take is not None and (
            record.fence != take.fence
            or (
                record.owner not in (None, owner)
                and record.lease_expires_at is not None
                and record.lease_expires_at >= at
            )
        ):
            raise TakeConflict(f"saga {saga_id} was written since it was read")
        if change.unless_cancelled and record.cancel_requested:
            raise CancelPending(f"saga {saga_id}: a cancel is pending")
        if change.effects:
            run_effects(change, None)
        if take is not None:  # before apply_change: a park or a release hands it back
            record.owner, record.lease_expires_at = owner, take.until
        record.fence += 1
        # The engine never mutates a StepRecord it has committed: keeping references is safe.
        apply_change(record, change, at)
        for message in change.outbox:
            self.outbox[message.id] = message
        status = change.status
        if status is _SUCCEEDED or status is _COMPENSATED or status is _FAILED:
            # The run that finished it goes on holding ``record`` (its waiters and hooks read
            # it); the store, from now on, the compact form.
            sagas[saga_id] = finish(record)
        elif record is not entry:
            sagas[saga_id] = record
