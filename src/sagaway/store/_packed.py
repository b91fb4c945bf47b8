"""A finished saga's step rows and history folded into one compact value (compaction).

A finished saga keeps its instance row; its step rows and events, one row each while it ran,
are packed into one value on that row. This module is the encoding, shared by the stores that
compact, so they cannot drift apart in how a packed saga reads back. It works on rows as the
SQL stores hold them (step rows: ``name, phase, status, attempts, output, error, uncertain,
started_at, finished_at`` with the output as JSON text; events: ``at, type, step, phase,
attempt, detail``), so packing builds no record objects.

The packed value is exact: ``unpack(base, pack(base, steps, events))`` gives back the same
rows, times to the last bit. Layout: one byte saying how the rest is stored, then the rest.
:func:`pack` writes ``t``, a binary form with no compression (deflate's set-up alone cost more
per saga than building the value, and this form is smaller than the deflated JSON was)::

    texts:  n, then n of: 2k (the store's shared text number k) or 2len+1 and UTF-8 bytes
            (step names, errors and event details, each once; the rest refers to them by index)
    times:  n, then n of: 2 + zigzag(ticks after the time before it, the first after
            ``created_at``), or 1 and the 8-byte float itself when the ticks do not give it
            back; each distinct time once (a step starts when its step_started event is)
    steps:  n, then n of: name, head byte (phase and status code << 3 | output 1 | error 2 |
            uncertain 4; code 0: phase and status follow as texts), attempts, started and
            finished (time index + 1, 0 for none), [output as len and UTF-8], [error]
    events: n, then n of: time index, head (type << 4 | step 1 | phase 2 | attempt 4 |
            detail 8; an unknown type's text follows), [step], [phase + 1, or 0 and its
            text], [attempt], [detail]

Every number is a little-endian base-128 varint; signed ones (attempts, ticks) are zigzagged.
A tick is 2**-22 s: POSIX times this side of 2038 are whole numbers of ticks. Enum values are
small integers (their index in the tuples below, which are only ever appended to; a value not
in them is kept as its text).

Values packed before (still read, never written): ``b``, the same without the times section
(each time written where it is used: a step's as 0 for none, 1 and the float, or 2 +
zigzag(ticks after ``created_at``); an event's as 0 and the float or 1 + zigzag(ticks after
the event before it)); ``j``, compact JSON ``[texts, steps, events]`` with enum values and
texts by index and times in ticks or floats; and ``z``, that JSON raw-deflated.

A store that appends rows for a packed saga afterwards (an operator's retry, a refused cancel)
reads them after the packed ones (:func:`merge_steps`), and compacting again folds both.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

# Append only: a packed value names enum members by their index here.
_PHASES = ("forward", "compensation")
_STEP_STATUSES = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "COMPENSATING",
    "COMPENSATED",
    "SKIPPED",
)
_EVENT_TYPES = (
    "saga_created",
    "saga_started",
    "step_started",
    "step_succeeded",
    "step_retrying",
    "step_failed",
    "step_resumed",
    "compensation_started",
    "step_compensated",
    "compensation_retrying",
    "compensation_failed",
    "saga_succeeded",
    "saga_compensated",
    "saga_failed",
    "saga_claimed",
    "cancel_requested",
    "cancel_refused",
    "deadline_expired",
    "retry_requested",
    "signal_received",
)
_PHASE_CODE: Final = {v: i for i, v in enumerate(_PHASES)}
_STEP_STATUS_CODE: Final = {v: i for i, v in enumerate(_STEP_STATUSES)}
_EVENT_TYPE_CODE: Final = {v: i for i, v in enumerate(_EVENT_TYPES)}

_TICKS: Final = 4194304.0  # 2**22 a second
_EXACT: Final = 9007199254740992.0  # 2**53: ticks from there on are written as the float
_BINARY, _BINARY_1 = b"t", b"b"
_FLOAT: Final = struct.Struct("<d")
# A step's phase and status as one code (1 + phase * 7 + status; 0: both as texts follow).
_STEP_CODE: Final = {
    (p, s): 1 + i * len(_STEP_STATUSES) + j
    for i, p in enumerate(_PHASES)
    for j, s in enumerate(_STEP_STATUSES)
}
_STEP_DECODE = {code: pair for pair, code in _STEP_CODE.items()}
# The same codes by phase, then status: no tuple to build and hash for each step row.
_STEP_CODES: Final[dict[str, dict[str, int]]] = {
    p: {s: code for (q, s), code in _STEP_CODE.items() if q == p} for p in _PHASES
}
# An output this long or longer is joined to the value as its bytes, not copied in byte by
# byte (``pack``); shorter ones (an int's text) cost less copied than as a piece of their own.
_SPLICED: Final = 24
_TEXT_TYPE: Final = 1023  # an event type kept as its text, which follows
_DEFLATE = b"z"
_WBITS = -10  # how ``z`` values were deflated: raw, a 1 KB window


StepRow = Sequence[Any]
EventRow = Sequence[Any]


def _untick(base: float, value: int | float) -> float:
    return value if type(value) is float else base + value / _TICKS


# Event types whose detail is the id of the engine that ran the step: kept once per store.
_OWNER_DETAIL = frozenset({"step_started", "compensation_started", "saga_claimed"})


def shareable(steps: Iterable[StepRow], events: Iterable[EventRow]) -> set[str]:
    """The texts of a saga that :func:`pack` refers to by number when the store numbers them:
    step names and engine ids, few and the same across sagas (never an error or a signal)."""
    found = {s[0] for s in steps}
    for _, kind, step, _, _, detail in events:
        if step is not None:
            found.add(step)
        if detail is not None and kind in _OWNER_DETAIL:
            found.add(detail)
    return found


def pack(
    base: float,
    steps: Iterable[StepRow],
    events: Iterable[EventRow],
    shared: dict[str, int] | None = None,
    unnumbered: list[str] | None = None,
) -> bytes:
    """The packed value of a saga created at ``base`` with these step rows and events (in
    history order); a text in ``shared`` is written as its number there, one that is not is
    written out (and added to ``unnumbered``, if given)."""
    # Runs once per finished saga in the commit that finishes it: plain loops, the common
    # one-byte varint appended inline (a call per field cost more than the rest of it). The
    # bytes go to a list of ints, made bytes at the end, and every method is called where it
    # is used, not through a local alias: the interpreter specialises a list's append, and
    # mypyc calls list.append and dict.setdefault directly (through an alias, or on a
    # bytearray, each is a generic call: 15% of pack in the compiled build). The same for the
    # code tables' ``get``. The tables are Final: compiled, each use was a module dict lookup.
    texts: dict[str, int] = {}
    # Each distinct time once (a step's start is the event that started it, its end the one
    # that ended it): converted to ticks once, referred to by index.
    moments: dict[float, int] = {}
    out: list[int] = []
    # The steps' bytes before the last long output, in order (see ``_SPLICED``).
    pieces: list[bytes] = []
    count = 0
    for row in steps:
        # Unpacked as a tuple: compiled, a Sequence is unpacked through a generic iterator
        # (~10% of pack); the rows are tuples but for a v11 journal's, which are lists.
        s: tuple[Any, ...] = row if type(row) is tuple else tuple(row)
        name, phase, status, attempts, output, error, uncertain, started, finished = s
        count += 1
        index = texts.setdefault(name, len(texts))
        if index < 128:
            out.append(index)
        else:
            _varint(out, index)
        codes = _STEP_CODES.get(phase)
        code = 0 if codes is None else codes.get(status, 0)
        flags = 0 if output is None else 1
        if error is not None:
            flags |= 2
        if uncertain:
            flags |= 4
        out.append(code << 3 | flags)
        if not code:
            _string(out, phase)
            _string(out, status)
        # Typed: compiled, an int's compare and shift are native, an Any's generic calls.
        tries: int = attempts
        if 0 <= tries < 64:
            out.append(tries << 1)
        else:
            _varint(out, _zigzag(tries))
        if started is None:
            out.append(0)
        else:
            index = moments.setdefault(started, len(moments))
            if index < 127:
                out.append(index + 1)
            else:
                _varint(out, index + 1)
        if finished is None:
            out.append(0)
        else:
            index = moments.setdefault(finished, len(moments))
            if index < 127:
                out.append(index + 1)
            else:
                _varint(out, index + 1)
        if output is not None:
            raw = output.encode()
            size = len(raw)
            if size < 128:
                out.append(size)
            else:
                _varint(out, size)
            if size < _SPLICED:
                out += raw
            else:
                # A long output (a model's JSON: hundreds of bytes) goes in as the bytes it
                # is: copied into the list of ints, and from it into the value, it cost ~100
                # instructions a byte, most of packing a saga with such outputs.
                pieces.append(bytes(out))
                pieces.append(raw)
                out = []
        if error is not None:
            _varint(out, texts.setdefault(error, len(texts)))
    steps_out: list[int] = out
    out = []
    steps_count, count = count, 0
    for item in events:
        e: tuple[Any, ...] = item if type(item) is tuple else tuple(item)
        at, kind, step, phase, attempt, detail = e
        count += 1
        index = moments.setdefault(at, len(moments))
        if index < 128:
            out.append(index)
        else:
            _varint(out, index)
        head: int = _EVENT_TYPE_CODE.get(kind, _TEXT_TYPE) << 4
        if step is not None:
            head |= 1
        if phase is not None:
            head |= 2
        if attempt is not None:
            head |= 4
        if detail is not None:
            head |= 8
        if head < 128:
            out.append(head)
        else:
            _varint(out, head)
        if head >> 4 == _TEXT_TYPE:
            _string(out, kind)
        if step is not None:
            index = texts.setdefault(step, len(texts))
            if index < 128:
                out.append(index)
            else:
                _varint(out, index)
        if phase is not None:
            known = _PHASE_CODE.get(phase)
            if known is None:
                out.append(0)
                _string(out, phase)
            else:
                out.append(known + 1)
        if attempt is not None:
            tries = attempt
            if 0 <= tries < 64:
                out.append(tries << 1)
            else:
                _varint(out, _zigzag(tries))
        if detail is not None:
            index = texts.setdefault(detail, len(texts))
            if index < 128:
                out.append(index)
            else:
                _varint(out, index)
    value: list[int] = [_BINARY[0]]
    _varint(value, len(texts))
    for t in texts:
        number = None if shared is None else shared.get(t)
        if number is None:
            if unnumbered is not None:
                unnumbered.append(t)
            raw = t.encode()
            _varint(value, len(raw) << 1 | 1)
            value += raw
        elif number < 64:
            value.append(number << 1)
        else:
            _varint(value, number << 1)
    _varint(value, len(moments))
    # Each time as 2 + zigzag(its ticks after the one before), or 1 and the float itself when
    # the ticks do not give it back; inline, as the one-byte varints are (a call per time was
    # a tenth of pack, compiled).
    previous: float = base
    for at in moments:
        ticks: float = (at - previous) * _TICKS
        if -_EXACT < ticks < _EXACT:
            whole = int(ticks)
            if whole == ticks and previous + whole / _TICKS == at:
                code = (whole << 1 if whole >= 0 else (-whole << 1) - 1) + 2
                while code > 127:
                    value.append((code & 127) | 128)
                    code >>= 7
                value.append(code)
                previous = at
                continue
        value.append(1)
        value += _FLOAT.pack(at)
        previous = at
    _varint(value, steps_count)
    if not pieces:
        value += steps_out
        _varint(value, count)
        value += out
        return bytes(value)
    parts = [bytes(value)]
    parts += pieces
    _varint(steps_out, count)
    steps_out += out
    parts.append(bytes(steps_out))
    return b"".join(parts)


def _varint(out: list[int], value: int) -> None:
    while value > 127:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)


def _zigzag(value: int) -> int:
    return value << 1 if value >= 0 else (-value << 1) - 1


def _unzigzag(value: int) -> int:
    return -((value + 1) >> 1) if value & 1 else value >> 1


def _string(out: list[int], value: str) -> None:
    raw = value.encode()
    _varint(out, len(raw))
    out += raw


def unpack(
    base: float,
    value: bytes,
    resolve: Callable[[list[int]], Mapping[int, str]] | None = None,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The step rows and events (in history order) of a packed value; see :func:`pack`.
    ``resolve`` gives the texts of the store's numbers it refers to."""
    raw = bytes(value)
    if raw[:1] == _BINARY or raw[:1] == _BINARY_1:
        return _Reader(raw).saga(base, resolve)
    body = zlib.decompress(raw[1:], _WBITS) if raw[:1] == _DEFLATE else raw[1:]
    texts, packed_steps, packed_events = json.loads(body)
    texts = _resolved(texts, resolve)
    steps = []
    for entry in packed_steps:
        padded = entry + [None, None, 0][len(entry) - 6 :]
        phase, status, started, finished, error = (
            padded[1],
            padded[2],
            padded[4],
            padded[5],
            padded[7],
        )
        steps.append(
            (
                texts[padded[0]],
                _PHASES[phase] if type(phase) is int else phase,
                _STEP_STATUSES[status] if type(status) is int else status,
                padded[3],
                padded[6],
                None if error is None else texts[error],
                padded[8],
                None if started is None else _untick(base, started),
                None if finished is None else _untick(base, finished),
            )
        )
    events = []
    previous = base
    for item in packed_events:
        at = _untick(previous, item[0])
        previous = at
        kind = item[1]
        step = phase = attempt = detail = None
        if len(item) > 2:
            step = None if item[2] is None else texts[item[2]]
            phase = item[3]
            if type(phase) is int:
                phase = _PHASES[phase]
            attempt = item[4]
            if len(item) > 5:
                detail = texts[item[5]]
        events.append(
            (at, _EVENT_TYPES[kind] if type(kind) is int else kind, step, phase, attempt, detail)
        )
    return steps, events


def _resolved(
    texts: list[Any], resolve: Callable[[list[int]], Mapping[int, str]] | None
) -> list[Any]:
    numbers = [t for t in texts if type(t) is int]
    if not numbers:
        return texts
    if resolve is None:
        raise ValueError("a packed saga refers to shared texts and none were given")
    known = resolve(numbers)
    return [known[t] if type(t) is int else t for t in texts]


class _Reader:
    """Reads a binary packed value (``b``) front to back; see :func:`pack`."""

    __slots__ = ("pos", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw, self.pos = raw, 1

    def varint(self) -> int:
        raw, pos = self.raw, self.pos
        byte = raw[pos]
        value, shift = byte & 127, 7
        pos += 1
        while byte > 127:
            byte = raw[pos]
            value |= (byte & 127) << shift
            shift += 7
            pos += 1
        self.pos = pos
        return value

    def string(self, size: int | None = None) -> str:
        if size is None:
            size = self.varint()
        start = self.pos
        self.pos = start + size
        return self.raw[start : self.pos].decode()

    def time(self, previous: float) -> float:
        code = self.varint()
        if code == 1:
            start = self.pos
            self.pos = start + 8
            at: float = _FLOAT.unpack_from(self.raw, start)[0]
            return at
        return previous + _unzigzag(code - 2) / _TICKS

    def moment(self, moments: list[float]) -> float | None:
        index = self.varint()
        return moments[index - 1] if index else None

    def inline_time(self, base: float, offset: int) -> float | None:
        """A time of a ``b`` value: ``offset`` + zigzag(ticks), ``offset - 1`` and the
        float, or (for a step's, ``offset`` 2) 0 for none."""
        code = self.varint()
        if code >= offset:
            return base + _unzigzag(code - offset) / _TICKS
        if code == offset - 1:
            start = self.pos
            self.pos = start + 8
            at: float = _FLOAT.unpack_from(self.raw, start)[0]
            return at
        return None

    def saga(
        self, base: float, resolve: Callable[[list[int]], Mapping[int, str]] | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        listed: list[Any] = []
        for _ in range(self.varint()):
            code = self.varint()
            listed.append(self.string(code >> 1) if code & 1 else code >> 1)
        texts = _resolved(listed, resolve)
        moments: list[float] = []
        inline = self.raw[:1] == _BINARY_1  # times where they are used, not in a section
        previous = base
        for _ in range(0 if inline else self.varint()):
            previous = self.time(previous)
            moments.append(previous)
        steps = []
        for _ in range(self.varint()):
            name = texts[self.varint()]
            head = self.raw[self.pos]
            self.pos += 1
            if head >> 3:
                phase, status = _STEP_DECODE[head >> 3]
            else:
                phase, status = self.string(), self.string()
            attempts = _unzigzag(self.varint())
            if inline:
                started, finished = self.inline_time(base, 2), self.inline_time(base, 2)
            else:
                started, finished = self.moment(moments), self.moment(moments)
            output = self.string() if head & 1 else None
            error = texts[self.varint()] if head & 2 else None
            uncertain = 1 if head & 4 else 0
            steps.append(
                (
                    name,
                    phase,
                    status,
                    attempts,
                    output,
                    error,
                    uncertain,
                    started,
                    finished,
                )
            )
        events = []
        previous = base
        for _ in range(self.varint()):
            if inline:
                at = self.inline_time(previous, 1)
                assert at is not None
                previous = at
            else:
                at = moments[self.varint()]
            head = self.varint()
            code = head >> 4
            kind = self.string() if code == _TEXT_TYPE else _EVENT_TYPES[code]
            step = texts[self.varint()] if head & 1 else None
            in_phase: str | None = None
            if head & 2:
                code = self.varint()
                in_phase = _PHASES[code - 1] if code else self.string()
            attempt = _unzigzag(self.varint()) if head & 4 else None
            detail = texts[self.varint()] if head & 8 else None
            events.append((at, kind, step, in_phase, attempt, detail))
        return steps, events


def merge_steps(packed: Iterable[StepRow], rows: Iterable[StepRow]) -> list[StepRow]:
    """A packed saga's step rows with those written since it was packed: a row replaces the
    packed step of the same (name, phase)."""
    by_key: dict[tuple[Any, Any], StepRow] = {(s[0], s[1]): s for s in packed}
    for s in rows:
        by_key[(s[0], s[1])] = s
    return list(by_key.values())
