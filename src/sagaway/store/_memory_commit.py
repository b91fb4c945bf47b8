"""The memory store's writes (``MemoryStore.commit`` and ``create``), on their own so that they are
compiled (DEVELOPERS.md "The compiled build"): it runs for every transition of every saga, and
the store's class, subclassed by tests and of several bases, stays interpreted.

A saga the store keeps is a ``SagaRecord`` while it can still change, and a ``Finished`` from the
commit that finishes it (SUCCEEDED, COMPENSATED, FAILED) on: its row's fields as they were, its
input, step rows and events as one pickle. A kept record was ~25 objects (~3 KB) the garbage
collector walked again and again and that grew the heap with every saga; a ``Finished`` is two,
one of them bytes. A write to a finished saga (an operator's retry of a FAILED one, a refused
cancel's event) puts the record back together first (``expand``); readers build theirs from it.
"""

from __future__ import annotations

import pickle
from typing import Any, Final

from sagaway.errors import CancelPending, EffectFailed, LeaseLost, SagaNotFound, TakeConflict
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
    apply_change,
    record_from_new,
)
from sagaway.store._codec import EVENT_TYPE, PHASE, STEP_STATUS, check_change, check_new

_SUCCEEDED: Final = SagaStatus.SUCCEEDED
_COMPENSATED: Final = SagaStatus.COMPENSATED
_FAILED: Final = SagaStatus.FAILED
# An enum member as its plain text, so that the pickle names no class (a StrEnum member hashes
# as its text: a dict lookup is C all the way, ``.value`` a Python property).
_TEXT: dict[str, str] = {m: str(m._value_) for m in [*Phase, *StepStatus, *EventType]}
# Fixed, not the newest: the pickles live only as long as the process.
_PROTOCOL: Final = 5
# How deep ``_plain`` looks into a value before leaving the record whole.
_PLAIN_DEPTH: Final = 32
_STEP_FIELDS: Final = 9
_EVENT_FIELDS: Final = 6


class Finished:
    """A finished saga as the memory store keeps it: the saga's row as it was (what scans and
    filters read) and ``packed``, a pickle of (input, step rows, events) as flat lists of
    plain values. Same attribute names as ``SagaRecord``'s, so a scan reads either."""

    __slots__ = (
        "cancel_requested",
        "created_at",
        "deadline_at",
        "error",
        "fence",
        "id",
        "idempotency_key",
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
    )

    def __init__(self, record: SagaRecord, packed: bytes) -> None:
        self.id, self.name, self.version = record.id, record.name, record.version
        self.status, self.created_at = record.status, record.created_at
        self.updated_at, self.idempotency_key = record.updated_at, record.idempotency_key
        self.owner, self.lease_expires_at = record.owner, record.lease_expires_at
        self.deadline_at, self.cancel_requested = record.deadline_at, record.cancel_requested
        self.error, self.waiting_for = record.error, record.waiting_for
        self.parked_until, self.pinned = record.parked_until, record.pinned
        self.fence, self.packed = record.fence, packed


def _plain(value: Any, depth: int) -> bool:
    """True when ``value`` is made of exact JSON types only (dict, list, tuple, str, int,
    float, bool, None), which a pickle gives back as they were: a subclass (an enum, a
    user's dict) would come back as a new object, or not at all."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is dict:
        mapping: dict[Any, Any] = value
        for key, item in mapping.items():
            if not (_plain(key, _PLAIN_DEPTH) and _plain(item, depth + 1)):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:  # noqa: SIM110 (all() of a generator: a generator object more)
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def finish(record: SagaRecord) -> Finished | None:
    """``record`` as a ``Finished``, or None when its input or an output is not plain JSON
    (``_plain``): such a record is kept as it is, so every read gives back the same."""
    if not _plain(record.input, 0):
        return None
    rows: list[Any] = []
    for step in record.steps.values():
        output = step.output
        if output is not None and not _plain(output, 0):
            return None
        rows.extend(
            (
                step.name,
                _TEXT[step.phase],
                _TEXT[step.status],
                step.attempts,
                output,
                step.error,
                step.uncertain,
                step.started_at,
                step.finished_at,
            )
        )
    events: list[Any] = []
    for event in record.history:
        phase = event.phase
        events.extend(
            (
                event.at,
                _TEXT[event.type],
                event.step,
                None if phase is None else _TEXT[phase],
                event.attempt,
                event.detail,
            )
        )
    try:  # (a name or a text of a str subclass pickle cannot name: kept as it is)
        packed = pickle.dumps((record.input, rows, events), _PROTOCOL)
    except Exception:
        return None
    return Finished(record, packed)


def expand(entry: Finished, history: bool = True) -> SagaRecord:
    """The record ``entry`` was made of: a new one, equal to it field for field (no
    ``definition``, as a store read has none); its history left empty unless ``history``."""
    saga_input, rows, events = pickle.loads(entry.packed)
    steps: dict[tuple[str, Phase], StepRecord] = {}
    for i in range(0, len(rows), _STEP_FIELDS):
        name: str = rows[i]
        phase = PHASE[rows[i + 1]]
        steps[(name, phase)] = StepRecord(
            name,
            phase,
            STEP_STATUS[rows[i + 2]],
            rows[i + 3],
            rows[i + 4],
            rows[i + 5],
            rows[i + 6],
            rows[i + 7],
            rows[i + 8],
        )
    timeline: list[Event] = []
    if history:
        for i in range(0, len(events), _EVENT_FIELDS):
            phase_text = events[i + 3]
            timeline.append(
                Event(
                    events[i],
                    EVENT_TYPE[events[i + 1]],
                    events[i + 2],
                    None if phase_text is None else PHASE[phase_text],
                    events[i + 4],
                    events[i + 5],
                )
            )
    return SagaRecord(
        entry.id,
        entry.name,
        entry.version,
        entry.status,
        saga_input,
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
    """Keep ``record`` in ``sagas``: as a ``Finished`` if it is finished and can be one."""
    status = record.status
    if status is _SUCCEEDED or status is _COMPENSATED or status is _FAILED:
        entry = finish(record)
        if entry is not None:
            sagas[record.id] = entry
            return
    sagas[record.id] = record


def create_saga(
    sagas: dict[str, SagaRecord | Finished], keys: dict[str, str], new: NewSaga
) -> tuple[str, bool]:
    """Record ``new`` in ``sagas`` (its key in ``keys``): ``(id, True)``; or, its idempotency
    key used already, ``(that saga's id, False)`` having changed nothing."""
    check_new(new)  # what another store could not keep, this one refuses too
    if new.idempotency_key is not None:
        existing = keys.get(new.idempotency_key)
        if existing is not None:
            return existing, False
        keys[new.idempotency_key] = new.id
    sagas[new.id] = record_from_new(new)
    return new.id, True


def commit_change(
    sagas: dict[str, SagaRecord | Finished],
    outbox: dict[str, OutboxMessage],
    saga_id: str,
    owner: str | None,
    change: Change,
    at: float,
) -> None:
    """Apply ``change`` to the saga's record in ``sagas`` and its messages to ``outbox``, or
    raise (SagaNotFound, LeaseLost, TakeConflict, CancelPending, EffectFailed) having changed
    nothing."""
    if not change.checked or change.outbox or change.park is not None:
        check_change(change)  # (what it checks of a runner's checked change is only these)
    take = change.take
    entry = sagas.get(saga_id)
    if entry is None:
        raise SagaNotFound(saga_id)
    # Finished: written again (an operator's retry), so a record again. No run holds it: the
    # record a run shares (``running_record``) is replaced only by the run's last commit.
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
    for write in change.effects:
        try:
            write(None)
        except Exception as exc:
            raise EffectFailed(f"a ctx.atomic() write failed: {exc}") from exc
    if take is not None:  # before apply_change: a park or a release hands it back
        record.owner, record.lease_expires_at = owner, take.until
    record.fence += 1
    # The engine never mutates a StepRecord it has committed, so keeping references is safe.
    apply_change(record, change, at)
    for message in change.outbox:
        outbox[message.id] = message
    status = change.status
    if status is _SUCCEEDED or status is _COMPENSATED or status is _FAILED:
        # The run that finished it goes on holding ``record`` (its waiters and hooks read it);
        # the store, from now on, the compact form.
        entry = finish(record)
        if entry is not None:
            sagas[saga_id] = entry
            return
    if record is not entry:
        sagas[saga_id] = record
