"""A finished saga's step rows and history folded into one compact value (compaction).

A finished saga keeps its instance row; its step rows and events, one row each while it ran,
are packed into one value on that row. This module is the encoding, shared by the stores that
compact, so they cannot drift apart in how a packed saga reads back. It works on rows as the
SQL stores hold them (step rows: ``name, phase, status, attempts, output, error, uncertain,
started_at, finished_at`` with the output as JSON text; events: ``at, type, step, phase,
attempt, detail``), so packing builds no record objects.

The packed value is exact: ``unpack(base, pack(base, steps, events))`` gives back the same
rows, times to the last bit. Layout: one byte saying how the rest is stored (``j``: compact
JSON; ``z``: that JSON raw-deflated, when it is smaller), then::

    [texts, steps, events]
    texts:  step names, errors and event details, each once; the rest refers to them by index.
            An integer in it stands for a text the store keeps once for every saga (a step
            name, an engine's id: the same in thousands of sagas), by the store's own number.
    step:   [name, phase, status, attempts, started, finished, output, error, uncertain]
            (trailing empty fields left out)
    event:  [dt, type] or [dt, type, step, phase, attempt] or [..., detail]

Enum values are small integers (their index in the tuples below, which are only ever appended
to; a value not in them is kept as its text). A step's time is an integer count of 2**-22 s
after the saga's ``created_at``; an event's, after the event before it (the first: after
``created_at``). POSIX times this side of 2038 are whole numbers of 2**-22 s; a time for which
the count does not give back the very same float is kept as the float itself.

A store that appends rows for a packed saga afterwards (an operator's retry, a refused cancel)
reads them after the packed ones (:func:`merge_steps`), and compacting again folds both.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sagaway.store._codec import dumps

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
_PHASE_CODE = {v: i for i, v in enumerate(_PHASES)}
_STEP_STATUS_CODE = {v: i for i, v in enumerate(_STEP_STATUSES)}
_EVENT_TYPE_CODE = {v: i for i, v in enumerate(_EVENT_TYPES)}

_TICKS = 4194304.0  # 2**22 a second
_JSON, _DEFLATE = b"j", b"z"
# Raw deflate, a 1 KB window, a small state: a history is a few hundred bytes, and the
# default state (256 KB to set up per call) costs more time than the compressing itself.
_WBITS, _MEM_LEVEL, _LEVEL = -10, 2, 6
# Shorter JSON rarely shrinks under deflate; don't spend the time.
_DEFLATE_FROM = 96


StepRow = Sequence[Any]
EventRow = Sequence[Any]


def _ticks(base: float, at: float) -> int | float:
    ticks = (at - base) * _TICKS
    if ticks.is_integer() and abs(ticks) < 2**53:
        whole = int(ticks)
        if base + whole / _TICKS == at:
            return whole
    return at


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
    shared: Mapping[str, int] | None = None,
) -> bytes:
    """The packed value of a saga created at ``base`` with these step rows and events (in
    history order); a text in ``shared`` is written as its number there."""
    # Runs once per finished saga in the commit that finishes it: kept to plain loops with
    # the time arithmetic inline (a call per time cost a tenth of it).
    texts: dict[str, int] = {}
    text = texts.setdefault
    phase_code, status_code, type_code = (
        _PHASE_CODE.get,
        _STEP_STATUS_CODE.get,
        _EVENT_TYPE_CODE.get,
    )
    packed_steps: list[list[Any]] = []
    for name, phase, status, attempts, output, error, uncertain, started, finished in steps:
        entry: list[Any] = [
            text(name, len(texts)),
            phase_code(phase, phase),
            status_code(status, status),
            attempts,
            None if started is None else _ticks(base, started),
            None if finished is None else _ticks(base, finished),
        ]
        if output is not None or error is not None or uncertain:
            entry.append(output)
            if error is not None or uncertain:
                entry.append(None if error is None else text(error, len(texts)))
                if uncertain:
                    entry.append(1)
        packed_steps.append(entry)
    packed_events: list[list[Any]] = []
    previous = base
    for at, kind, step, phase, attempt, detail in events:
        if at == previous:
            tick: int | float = 0
        else:
            ticks = (at - previous) * _TICKS
            tick = int(ticks) if ticks.is_integer() and abs(ticks) < 2**53 else at
            if tick is not at and previous + tick / _TICKS != at:
                tick = at
        previous = at
        if step is None and phase is None and attempt is None and detail is None:
            packed_events.append([tick, type_code(kind, kind)])
        elif detail is None:
            packed_events.append(
                [
                    tick,
                    type_code(kind, kind),
                    None if step is None else text(step, len(texts)),
                    None if phase is None else phase_code(phase, phase),
                    attempt,
                ]
            )
        else:
            packed_events.append(
                [
                    tick,
                    type_code(kind, kind),
                    None if step is None else text(step, len(texts)),
                    None if phase is None else phase_code(phase, phase),
                    attempt,
                    text(detail, len(texts)),
                ]
            )
    listed = list(texts) if not shared else [shared.get(t, t) for t in texts]
    body = dumps([listed, packed_steps, packed_events]).encode()
    if len(body) >= _DEFLATE_FROM:
        squeezer = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL)
        squeezed = squeezer.compress(body) + squeezer.flush()
        if len(squeezed) < len(body):
            return _DEFLATE + squeezed
    return _JSON + body


def unpack(
    base: float,
    value: bytes,
    resolve: Callable[[list[int]], Mapping[int, str]] | None = None,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The step rows and events (in history order) of a packed value; see :func:`pack`.
    ``resolve`` gives the texts of the store's numbers it refers to."""
    raw = bytes(value)
    body = zlib.decompress(raw[1:], _WBITS) if raw[:1] == _DEFLATE else raw[1:]
    texts, packed_steps, packed_events = json.loads(body)
    numbers = [t for t in texts if type(t) is int]
    if numbers:
        if resolve is None:
            raise ValueError("a packed saga refers to shared texts and none were given")
        known = resolve(numbers)
        texts = [known[t] if type(t) is int else t for t in texts]
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


def merge_steps(packed: Iterable[StepRow], rows: Iterable[StepRow]) -> list[StepRow]:
    """A packed saga's step rows with those written since it was packed: a row replaces the
    packed step of the same (name, phase)."""
    by_key: dict[tuple[Any, Any], StepRow] = {(s[0], s[1]): s for s in packed}
    for s in rows:
        by_key[(s[0], s[1])] = s
    return list(by_key.values())
