"""The memory store's writes (``MemoryStore.commit`` and ``create``), on their own so that they are
compiled (DEVELOPERS.md "The compiled build"): it runs for every transition of every saga, and
the store's class, subclassed by tests and of several bases, stays interpreted.

A saga the store keeps is a ``SagaRecord`` while it can still change, and a ``Finished`` from the
commit that finishes it (SUCCEEDED, COMPENSATED, FAILED) on: its row's fields as they were, and
its step rows and events as two flat lists of their fields. A kept record was ~18 objects the
garbage collector tracks (the record, its step map, a key tuple and a ``StepRecord`` per step
row, its history list, an ``Event`` per event); a ``Finished`` is three (the lists hold enum
members, which keeps them tracked). The lists are kept as built, sized to their fields: copied
into tuples they cost ~1.5k instructions a saga more (compiled) for ~20 bytes less each. In
``engine_throughput``'s workload, 30,000 sagas kept: 17.8 tracked objects a saga -> 3.0, a
full collection 316 -> 86 ms, 3.3 -> 2.5 KB of peak RSS a saga.
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

from mypy_extensions import i64

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
from sagaway.store._codec import check_change, check_new

_SUCCEEDED: Final = SagaStatus.SUCCEEDED
_COMPENSATED: Final = SagaStatus.COMPENSATED
_FAILED: Final = SagaStatus.FAILED
# Enum members by a small code (in this process only: a packed saga is never stored elsewhere);
# the highest code of each width says "not a member: the value is in ``extra``".
_PHASES: Final = tuple(Phase)
_STEP_STATUSES: Final = tuple(StepStatus)
_EVENT_TYPES: Final = tuple(EventType)
_PHASE_CODE: Final = {m: i for i, m in enumerate(_PHASES)}
_STEP_STATUS_CODE: Final = {m: i for i, m in enumerate(_STEP_STATUSES)}
_EVENT_TYPE_CODE: Final = {m: i for i, m in enumerate(_EVENT_TYPES)}
_OTHER_PHASE: Final = 3  # 2 bits (an event's: 0 for none, the code + 1, or this)
_OTHER_STATUS: Final = 7  # 3 bits
_OTHER_TYPE: Final = 31  # 5 bits
_TICKS: Final = 4194304.0  # 2**22 a second: POSIX times this side of 2038 are whole ticks
_EXACT: Final = 9007199254740992.0  # 2**53
_WORD: Final = 62  # bits a word: a compiled int up to 62 bits is native, not an object


class Finished:
    """A finished saga as the memory store keeps it: the saga's row as it was (what scans and
    filters read: same attribute names as ``SagaRecord``'s, so a scan reads either), its input,
    and its step rows and events packed into one int (``packed``) and the values it refers
    to (``extra``): see ``finish``."""

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


class _Writer:
    """Fields of a few bits each, packed into 62-bit words (native when compiled); a value
    that is not a small int goes to ``extra``, referred to by its index there. ``done``: the
    words and then ``extra``, one tuple."""

    def __init__(self, previous: float) -> None:
        # i64: compiled, machine words (an int's shifts and ors check for overflow each)
        self.word: i64 = 0
        self.used: i64 = 0
        self.words: list[int] = []
        self.count = 0  # of words, once done
        self.extra: list[Any] = []
        self.previous = previous  # the last time written (times are written after it)

    def put(self, value: i64, width: i64) -> None:
        """``value`` (0 <= value < 2**width, width <= 30) in the next ``width`` bits."""
        used = self.used
        if used + width <= _WORD:
            self.word |= value << used
            self.used = used + width
            return
        room = _WORD - used
        self.words.append(self.word | (value & ((1 << room) - 1)) << used)
        self.word, self.used = value >> room, width - room

    def uint(self, value: int) -> None:
        """An int >= 0: 2 bits saying how wide (6, 14, 30 bits, or kept in ``extra``)."""
        if value < 64:
            self.put(value << 2, 8)
        elif value < 16384:
            self.put(value << 2 | 1, 16)
        elif value < 1073741824:
            self.put(2, 2)
            self.put(value, 30)
        else:
            self.keep(value)

    def signed(self, value: int) -> None:
        self.uint(value << 1 if value >= 0 else (-value << 1) - 1)

    def keep(self, value: Any) -> None:
        """``value`` as it is, in ``extra``."""
        self.put(3, 2)
        self.uint(len(self.extra))
        self.extra.append(value)

    def text(self, value: Any) -> None:
        """``value``'s index in ``extra``, where it is put once a saga (the same object again:
        the same index). The field is always one, so no tag says so."""
        extra = self.extra
        for i, known in enumerate(extra):
            if known is value:
                self.uint(i)
                return
        self.uint(len(extra))
        extra.append(value)

    def time(self, at: float) -> None:
        """``at`` as zigzag(its ticks after the time before it), or kept when the ticks do not
        give it back to the last bit."""
        previous = self.previous
        self.previous = at
        ticks = (at - previous) * _TICKS
        if -_EXACT < ticks < _EXACT:
            whole = int(ticks)
            back = float(whole)  # compared as floats: an int against a float is generic
            if back == ticks and previous + back / _TICKS == at:
                self.signed(whole)
                return
        self.keep(at)

    def done(self) -> tuple[Any, ...]:
        """The words, then the values kept."""
        words = self.words
        if self.used:
            words.append(self.word)
        self.count = len(words)
        words += self.extra
        return tuple(words)


# The codes of the members most rows hold, compared by identity first: a dict look-up a field
# (the member's hash and the probe) was ~1.7k instructions a saga, compiled.
_FORWARD: Final = Phase.FORWARD
_COMPENSATION: Final = Phase.COMPENSATION
_STEP_SUCCEEDED: Final = StepStatus.SUCCEEDED
_STEP_SUCCEEDED_CODE: Final = _STEP_STATUSES.index(StepStatus.SUCCEEDED)
_STEP_COMPENSATED: Final = StepStatus.COMPENSATED
_STEP_COMPENSATED_CODE: Final = _STEP_STATUSES.index(StepStatus.COMPENSATED)
_STEP_STARTED: Final = EventType.STEP_STARTED
_STEP_STARTED_CODE: Final = _EVENT_TYPES.index(EventType.STEP_STARTED)
_STEP_DONE: Final = EventType.STEP_SUCCEEDED
_STEP_DONE_CODE: Final = _EVENT_TYPES.index(EventType.STEP_SUCCEEDED)


def _phase_code(phase: Phase) -> int:
    if phase is _FORWARD:
        return 0
    return 1 if phase is _COMPENSATION else _OTHER_PHASE


def _step_status_code(status: StepStatus) -> int:
    if status is _STEP_SUCCEEDED:
        return _STEP_SUCCEEDED_CODE
    if status is _STEP_COMPENSATED:
        return _STEP_COMPENSATED_CODE
    return _STEP_STATUS_CODE.get(status, _OTHER_STATUS)


def _event_type_code(kind: EventType) -> int:
    if kind is _STEP_STARTED:
        return _STEP_STARTED_CODE
    if kind is _STEP_DONE:
        return _STEP_DONE_CODE
    return _EVENT_TYPE_CODE.get(kind, _OTHER_TYPE)


def finish(record: SagaRecord) -> Finished:
    """``record`` as a ``Finished``. Its step rows and events are one int, and the values it
    does not hold (texts, an output other than None or an int, a time not a whole number of
    ticks after the one before it) one tuple: neither is a container the garbage collector
    walks but for an output that is one. As lists of their fields, they were two lists of ~75
    references a saga that every collection walked (~1 us a saga in ``engine_throughput``)."""
    w = _Writer(record.created_at)
    steps = record.steps
    w.uint(len(steps))
    for step in steps.values():
        w.text(step.name)
        phase = _phase_code(step.phase)
        status = _step_status_code(step.status)
        output = step.output
        kind = 0 if output is None else 1 if type(output) is int else 2
        error = step.error
        started, finished = step.started_at, step.finished_at
        # phase 2, status 3, uncertain 1, output kind 2, error / started / finished 1 each
        w.put(
            phase
            | status << 2
            | (32 if step.uncertain else 0)
            | kind << 6
            | (0 if error is None else 256)
            | (0 if started is None else 512)
            | (0 if finished is None else 1024),
            11,
        )
        if phase == _OTHER_PHASE:
            w.text(step.phase)
        if status == _OTHER_STATUS:
            w.text(step.status)
        w.signed(step.attempts)
        if kind == 1:
            w.signed(output)
        elif kind == 2:
            w.text(output)
        if error is not None:
            w.text(error)
        if started is not None:
            w.time(started)
        if finished is not None:
            w.time(finished)
    history = record.history
    w.uint(len(history))
    for event in history:
        w.time(event.at)
        code = _event_type_code(event.type)
        in_phase = event.phase
        phase = 0 if in_phase is None else _phase_code(in_phase) + 1
        if phase > _OTHER_PHASE:
            phase = _OTHER_PHASE
        step_name, attempt, detail = event.step, event.attempt, event.detail
        # type 5, phase 2, step / attempt / detail 1 each
        w.put(
            code
            | phase << 5
            | (0 if step_name is None else 128)
            | (0 if attempt is None else 256)
            | (0 if detail is None else 512),
            10,
        )
        if code == _OTHER_TYPE:
            w.text(event.type)
        if phase == _OTHER_PHASE:
            w.text(in_phase)
        if step_name is not None:
            w.text(step_name)
        if attempt is not None:
            w.signed(attempt)
        if detail is not None:
            w.text(detail)
    packed = w.done()
    return Finished(record, packed, w.count)


class _Reader:
    """Reads ``Finished.packed`` in the order ``finish`` wrote it."""

    def __init__(self, entry: Finished) -> None:
        self.packed, self.kept = entry.packed, entry.words
        self.word: i64 = self.packed[0] if self.kept else 0
        self.left: i64 = _WORD
        self.next = 1
        self.previous: float = entry.created_at

    def get(self, width: i64) -> i64:
        left = self.left
        if width <= left:
            value = self.word & ((1 << width) - 1)
            self.word >>= width
            self.left = left - width
            return value
        low = self.word
        word: i64 = self.packed[self.next]
        self.next += 1
        rest = width - left
        self.word, self.left = word >> rest, _WORD - rest
        return low | (word & ((1 << rest) - 1)) << left

    def value(self) -> Any:
        """What ``_Writer.uint``, ``keep`` or ``text`` wrote."""
        size = self.get(2)
        if size == 0:
            return self.get(6)
        if size == 1:
            return self.get(14)
        if size == 2:
            return self.get(30)
        return self.packed[self.kept + self.value()]

    def text(self) -> Any:
        """What ``_Writer.text`` wrote."""
        index: int = self.value()
        return self.packed[self.kept + index]

    def signed(self) -> int:
        code: int = self.value()
        return code >> 1 if not code & 1 else -((code + 1) >> 1)

    def time(self) -> float:
        found = self.value()
        if type(found) is float:
            at: float = found
        else:
            code: int = found
            whole = code >> 1 if not code & 1 else -((code + 1) >> 1)
            at = self.previous + float(whole) / _TICKS
        self.previous = at
        return at


def expand(entry: Finished, history: bool = True) -> SagaRecord:
    """The record ``entry`` was made of: a new one, equal to it field for field (no
    ``definition``, as a store read has none); its history left empty unless ``history``."""
    read = _Reader(entry)
    steps: dict[tuple[str, Phase], StepRecord] = {}
    for _ in range(read.value()):
        name: str = read.text()
        head = read.get(11)
        code = head & 3
        phase: Phase = read.text() if code == _OTHER_PHASE else _PHASES[code]
        code = (head >> 2) & 7
        status: StepStatus = read.text() if code == _OTHER_STATUS else _STEP_STATUSES[code]
        attempts = read.signed()
        kind = (head >> 6) & 3
        output: Any = None if kind == 0 else read.signed() if kind == 1 else read.text()
        error: str | None = read.text() if head & 256 else None
        started = read.time() if head & 512 else None
        finished = read.time() if head & 1024 else None
        steps[(name, phase)] = StepRecord(
            name, phase, status, attempts, output, error, head & 32 != 0, started, finished
        )
    timeline: list[Event] = []
    if history:
        for _ in range(read.value()):
            at = read.time()
            head = read.get(10)
            code = head & 31
            type_: EventType = read.text() if code == _OTHER_TYPE else _EVENT_TYPES[code]
            code = (head >> 5) & 3
            in_phase: Phase | None = (
                None if code == 0 else read.text() if code == _OTHER_PHASE else _PHASES[code - 1]
            )
            step: str | None = read.text() if head & 128 else None
            attempt = read.signed() if head & 256 else None
            detail: str | None = read.text() if head & 512 else None
            timeline.append(Event(at, type_, step, in_phase, attempt, detail))
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
        or raise (SagaNotFound, LeaseLost, TakeConflict, CancelPending, EffectFailed) having
        changed nothing."""
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
        for write in change.effects:
            try:
                write(None)
            except Exception as exc:
                raise EffectFailed(f"a ctx.atomic() write failed: {exc}") from exc
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
