"""A finished saga's step rows and events as the memory store keeps them when compiled
(``_memory_commit.Finished``): one tuple, the fields packed a few bits each into 62-bit words
(native machine words when compiled, ``i64``), then the values the words refer to by index
(the step names and other texts, an output other than None or an int, a time that is not a
whole number of 2**-22 s ticks after the time before it), each once.

Why: kept as lists of their fields, a finished saga was ~94 references that the cyclic garbage
collector visits at every collection that looks at it (what a collection costs is the
references it visits, hot or cold), and three objects it counts towards its next collection.
This is one tuple of atomic values (untracked once it survives a collection: later ones do not
walk it) of ~14 references. In ``engine_throughput``'s memory workload (compiled, the
benchmark's thresholds) the collector's time a saga fell 1.08 -> 0.64 us at 10,000 sagas and
1.57 -> 0.70 at 50,000; packing costs ~7k instructions a saga more than the lists (README,
session 16, lane gc). Interpreted it would cost ~12 us a saga (a Python call a field): the
interpreted build keeps the lists (``COMPILED``).

Never stored anywhere else, so the layout is this process's own (an enum member by its index
in its class). Exact: a read gives back the same values, times to the last bit, outputs and
texts as the very objects.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, Final

from mypy_extensions import i64

from sagaway.state import Event, EventType, Phase, SagaRecord, StepRecord, StepStatus

# Enum members by a small code (in this process only: a packed saga is never stored elsewhere);
# the highest code of each width says "not a member: the value is in ``extra``".
_PHASES: Final = tuple(Phase)
_STEP_STATUSES: Final = tuple(StepStatus)
_EVENT_TYPES: Final = tuple(EventType)
_STEP_STATUS_CODE: Final = {m: i for i, m in enumerate(_STEP_STATUSES)}
_EVENT_TYPE_CODE: Final = {m: i for i, m in enumerate(_EVENT_TYPES)}
_OTHER_PHASE: Final = 3  # 2 bits (an event's: 0 for none, the code + 1, or this)
_OTHER_STATUS: Final = 7  # 3 bits
_OTHER_TYPE: Final = 31  # 5 bits
_TICKS: Final = 4194304.0  # 2**22 a second: POSIX times this side of 2038 are whole ticks
_EXACT: Final = 9007199254740992.0  # 2**53
_WORD: Final = 62  # bits a word: a compiled int up to 62 bits is native, not an object


def _probe() -> None:
    """Only looked at: compiled, a function is a builtin, not a ``FunctionType``."""


# Whether this module is compiled: ``_memory_commit.finish`` packs a saga only then.
COMPILED: Final = type(_probe) is not FunctionType


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


def pack(record: SagaRecord) -> tuple[tuple[Any, ...], int]:
    """``record``'s step rows and events: the words, then the values they refer to, one tuple;
    and how many words."""
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
    return packed, w.count


def _unzigzag(code: int) -> int:
    """The int ``_Writer.signed`` wrote as ``code``."""
    return code >> 1 if not code & 1 else -((code + 1) >> 1)


class _Reader:
    """Reads a packed value in the order ``pack`` wrote it."""

    def __init__(self, packed: tuple[Any, ...], words: int, created_at: float) -> None:
        self.packed, self.kept = packed, words
        self.word: i64 = self.packed[0] if self.kept else 0
        self.left: i64 = _WORD
        self.next = 1
        self.previous: float = created_at

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
        return _unzigzag(self.value())

    def time(self) -> float:
        found = self.value()
        if type(found) is float:
            at: float = found
        else:
            at = self.previous + float(_unzigzag(found)) / _TICKS
        self.previous = at
        return at


def unpack(
    packed: tuple[Any, ...], words: int, created_at: float, history: bool
) -> tuple[dict[tuple[str, Phase], StepRecord], list[Event]]:
    """The step rows and (if ``history``, else none) the events ``pack`` packed, of a saga
    created at ``created_at``."""
    read = _Reader(packed, words, created_at)
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
    return steps, timeline
