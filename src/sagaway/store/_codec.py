"""What every saga-log adapter needs to turn records into rows and back: compact JSON and enum
lookups by value; and how a change's ``ctx.atomic()`` writes run (``run_effects``). One copy,
so the stores cannot drift apart in how they encode a value or answer a refusal."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Final

from sagaway.errors import EffectFailed, EffectRefused, StepFailed, UnstorableValue
from sagaway.state import (
    Change,
    EventType,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaStatus,
    StepStatus,
)

__all__ = [
    "EVENT_TYPE",
    "PHASE",
    "SAGA_STATUS",
    "STEP_STATUS",
    "check_change",
    "check_new",
    "check_outbox",
    "check_text",
    "check_value",
    "dumps",
    "loads",
    "plainly_storable",
    "printable",
    "run_effects",
    "storable_text",
]


def _unserializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# Compact JSON, same text as ``JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode``
# but calling the C encoder directly: ``encode`` goes through two Python frames first, which
# measured ~1.2 us of ~1.6 us for a step's int output (a few calls per saga on a writer).
# No circular-reference markers (a shared dict would be shared between threads): a circular
# value fails with RecursionError instead of ValueError.
# Final, as the encoders below: compiled, a module-level name that is not is looked up in the
# module's dict at every call (dumps runs a few times a transition).
_quote: Final = encode_basestring
_encode: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_c_encode: Final = (
    None
    if c_make_encoder is None  # no _json accelerator on this interpreter
    else c_make_encoder(
        None, _unserializable, encode_basestring, None, ":", ",", False, False, True
    )
)


_c_strict: Final = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _unserializable, encode_basestring, None, ":", ",", False, False, False
    )
)
_strict: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
# A NUL character encodes as the escape \u0000, which PostgreSQL's jsonb refuses; a backslash
# followed by "u0000" in the text encodes as \\u0000. An odd run of backslashes is the escape.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _offender(value: Any, exc: BaseException) -> str:
    """What in ``value`` JSON could not encode, as "a value of type X" words."""
    if isinstance(exc, TypeError):
        # "Object of type bytes is not JSON serializable": the innermost offender's type.
        match = re.match(r"Object of type (\S+) is not", str(exc))
        name = match.group(1) if match else type(value).__name__
        return f"a value of type {name} (not JSON)"
    if isinstance(exc, RecursionError):
        return "a circular or too deeply nested value"
    if "float" in str(exc):
        return "a float NaN or infinity (not JSON)"
    if "integer string conversion" in str(exc):
        return "a value of type int with too many digits (not JSON)"
    return f"a value JSON cannot encode ({exc})"


def check_value(value: Any, what: str) -> str:
    """``value`` as compact JSON, or ``UnstorableValue`` naming ``what`` and the offending type
    when no store could keep it: what every store can hold is exactly what this accepts."""
    try:
        if type(value) is str:
            text = str(_quote(value))
        elif _c_strict is None:
            text = _strict(value)
        else:
            text = "".join(_c_strict(value, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableValue(
            f"the saga log cannot store {what}: {_offender(value, exc)}"
        ) from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise UnstorableValue(
            f"the saga log cannot store {what}: a value of type str with a NUL character"
        )
    if not text.isascii():
        _check_encodable(text, what)
    return text


# How deep ``plainly_storable`` looks before leaving the value to ``check_value``.
_PLAIN_DEPTH: Final = 16
# The ints ``plainly_storable`` passes: JSON spells an int of any size, but Python turns one
# of more than 4,300 digits (its default limit) into text only on request, so a big one goes
# to ``check_value``, which refuses it past the limit. Final, and within a compiled int's
# unboxed range (2**62): compiled, the bounds are then constants and the comparison a C
# comparison, where a module global of 2**64 was a dict look-up and a big-int compare each
# (~1k instructions an int checked).
_PLAIN_INT: Final = 0x3FFF_FFFF_FFFF_FFFF  # 2**62 - 1


def plainly_storable(value: Any, depth: int = 0) -> bool:
    """True when ``check_value`` would accept ``value``, decided without encoding it, for the
    shapes a step's input and outputs mostly have (dicts with ASCII keys, lists, ASCII text
    without NUL, ints, bools, finite floats, None); False when it cannot tell, not a refusal:
    then ``check_value`` decides. Encoding a saga's two-field input only to check it cost ~8k
    instructions a saga, compiled; this walk a tenth of that. It accepts nothing
    ``check_value`` refuses: exact types only (a subclass may encode its own way), and deep
    or circular values go to ``check_value``."""
    kind = type(value)
    if kind is str:
        text: str = value
        return text.isascii() and "\x00" not in text
    if kind is int:
        whole: int = value
        return -_PLAIN_INT <= whole <= _PLAIN_INT
    if kind is bool or value is None:
        return True
    if kind is float:
        number: float = value
        return number - number == 0.0  # finite: inf - inf and nan - nan are nan
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is dict:
        mapping: dict[Any, Any] = value
        for key, item in mapping.items():
            if type(key) is not str:
                return False
            name: str = key
            if not name.isascii() or "\x00" in name:
                return False
            if not (type(item) is bool or item is None or plainly_storable(item, depth + 1)):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if not (type(item) is bool or item is None or plainly_storable(item, depth + 1)):
                return False
        return True
    return False


def storable_text(text: str) -> bool:
    """True when a text column can hold ``text`` (an id looked up: one that cannot be stored
    names no saga, on every store, instead of failing on some)."""
    if text.isascii():
        return "\x00" not in text
    try:
        check_text(text, "")
    except UnstorableValue:
        return False
    return True


def printable(text: str) -> str:
    """``text`` made storable for an error or detail column: a NUL becomes the two characters
    \\0 and a lone surrogate its backslash escape (errors come from any exception's text)."""
    if text.isascii() and "\x00" not in text:
        return text
    text = text.replace("\x00", "\\0")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text(text: str | None, what: str) -> None:
    """A text column's value (an error, an event's detail, a key): no NUL, no lone surrogate."""
    if text is None or (text.isascii() and "\x00" not in text):
        return
    if "\x00" in text:
        raise UnstorableValue(
            f"the saga log cannot store {what}: a value of type str with a NUL character"
        )
    _check_encodable(text, what)


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableValue(
            f"the saga log cannot store {what}: a value of type str with a lone surrogate"
        ) from None


def check_new(new: NewSaga) -> None:
    """Refuse a new saga any store would fail to write, before it joins a batch."""
    if new.checked:
        return
    check_value(new.input, f"the input of saga {new.name!r}")
    check_text(new.idempotency_key, "an idempotency key")
    check_text(new.id, "a saga id")
    _check_rows(new.steps, new.events)


def check_change(change: Change) -> None:
    """Refuse a transition any store would fail to write, before it joins a batch."""
    if change.outbox:
        check_outbox(change.outbox)
    if change.park is not None:
        check_text(change.park.waiting_for, "what a parked saga waits for")
    if change.checked:
        return
    check_text(change.error, "a saga error")
    _check_rows(change.steps, change.events)


def check_outbox(messages: tuple[OutboxMessage, ...]) -> None:
    """Refuse outbox messages any store would fail to write. Unlike the rest of a Change,
    checked even when ``change.checked``: the runner checks step outputs, not messages."""
    for message in messages:
        check_text(message.id, "an outbox message id")
        check_text(message.topic, "an outbox message topic")
        check_value(message.body, f"the body of outbox message {message.id!r}")
        check_value(message.headers, f"the headers of outbox message {message.id!r}")


def _check_rows(steps: Any, events: Any) -> None:
    for step in steps:
        if step.output is not None:
            check_value(step.output, f"the output of step {step.name!r}")
        check_text(step.error, f"the error of step {step.name!r}")
    for event in events:
        check_text(event.detail, "an event's detail")


def dumps(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(_quote(value))
    if kind is int:
        # What the encoder writes for an exact int (``int.__repr__``), without its list and
        # join (~2k instructions compiled: a step's output is often an int).
        whole: int = value
        return str(whole)
    if kind is dict:
        flat = _flat_object(value)
        if flat is not None:
            return flat
    if _c_encode is None:
        return _encode(value)
    return "".join(_c_encode(value, 0))


def _flat_object(mapping: dict[Any, Any]) -> str | None:
    """The JSON of a dict of text keys to exact ints and texts (a saga's input, often: ids and
    amounts) as the encoder writes it, or None for any other dict: compiled, ~2k instructions
    where the encoder's call, its list of pieces and their join cost ~6k."""
    parts: list[str] = []
    for key, item in mapping.items():
        if type(key) is not str:
            return None
        kind = type(item)
        if kind is int:
            whole: int = item
            parts.append(f"{_quote(key)}:{whole}")
        elif kind is str:
            parts.append(f"{_quote(key)}:{_quote(item)}")
        else:
            return None
    return "{" + ",".join(parts) + "}"


loads = json.loads

# Enum lookups by value through a dict: calling the enum class is several times slower.
SAGA_STATUS = {s.value: s for s in SagaStatus}
STEP_STATUS = {s.value: s for s in StepStatus}
PHASE = {p.value: p for p in Phase}
EVENT_TYPE = {t.value: t for t in EventType}


def message_from_row(row: Sequence[Any]) -> OutboxMessage:
    """An outbox row as the SQL stores select it: id, saga_id, topic, body, headers, created_at."""
    return OutboxMessage(
        id=row[0],
        saga_id=row[1],
        topic=row[2],
        body=loads(row[3]),
        headers=loads(row[4]),
        created_at=row[5],
    )


def run_effects(change: Change, conn: Any) -> None:
    """``change``'s ``ctx.atomic()`` writes on ``conn`` (None on the memory store), before the
    store writes the transition: a write raising ``StepFailed`` refuses it (``EffectRefused``),
    any other exception is a broken write (``EffectFailed``); either way the store then writes
    nothing of the change (its savepoint or replay undoes what the writes changed).

    ``EffectRefused`` is raised here, not chained to the refusal (and the SQLite batch drops
    its traceback where it keeps it for the caller): a traceback holds the frames of the batch
    being written, whose futures hold the error, a reference cycle a refused order for the
    collector (measured: ~80 objects each, +3% CPU an order in checkout_cost.py)."""
    for write in change.effects:
        try:
            write(conn)
        except StepFailed as exc:
            refused = exc.reason
        except Exception as exc:
            raise EffectFailed(f"a ctx.atomic() write failed: {exc}") from exc
        else:
            continue
        raise EffectRefused(refused)
