"""The Redis saga log's codec: its URL, and how records travel to and from its Lua scripts
(script arguments, the JSON arrays of step rows, events and outbox messages, the hashes that
come back). The scripts' data layout is in ``_redis_scripts``."""

from __future__ import annotations

from collections.abc import Sequence
from json.encoder import encode_basestring as _quote
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sagaway.errors import SagawayError
from sagaway.state import Event, OutboxMessage, SagaRecord, StepRecord
from sagaway.store._codec import EVENT_TYPE as _EVENT_TYPE
from sagaway.store._codec import PHASE as _PHASE
from sagaway.store._codec import SAGA_STATUS as _SAGA_STATUS
from sagaway.store._codec import STEP_STATUS as _STEP_STATUS
from sagaway.store._codec import dumps as _dumps
from sagaway.store._codec import loads as _loads


def parse_url(url: str) -> tuple[str, str]:
    """``(redis_url, prefix)``: the URL redis-py gets (our own parameters removed), the prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise SagawayError(f"bad Redis URL {url!r}: use redis://host:6379/0 or rediss://")
    prefix, rest = "sagaway", []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "prefix":
            if not value:
                raise SagawayError(f"bad Redis URL {url!r}: prefix must not be empty")
            prefix = value
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


def opt(value: str | None) -> str:
    """Optional string argument for a script: "" is None, "=value" a value (even "")."""
    return "" if value is None else "=" + value


def time_arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))


# Step rows and events are small JSON arrays built with f-strings: json's encoder sets itself
# up again on every call, which made encoding a third of a commit's Python time.
def _js(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _jn(value: float | None) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if text[-1].isdigit() else _dumps(value)  # inf/nan: let json spell them


def event_json(e: Event) -> str:
    return (
        f"[{_jn(e.at)},{_js(e.type)},{_js(e.step)},{_js(e.phase)},{_jn(e.attempt)},{_js(e.detail)}]"
    )


def step_items(steps: Sequence[StepRecord]) -> list[str]:
    items = [str(2 * len(steps))]
    for s in steps:
        output = "null" if s.output is None else _dumps(s.output)
        uncertain = "true" if s.uncertain else "false"
        items.append(f"{s.name}|{s.phase}")
        items.append(
            f"[{_js(s.status)},{_jn(s.attempts)},{output},{_js(s.error)},{uncertain},"
            f"{_jn(s.started_at)},{_jn(s.finished_at)}]"
        )
    return items


def _pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def saga_from_hash(flat: list[str]) -> SagaRecord:
    h = _pairs(flat)
    return SagaRecord(
        id=h["id"],
        name=h["name"],
        version=int(h["version"]),
        status=_SAGA_STATUS[h["status"]],
        input=_loads(h["input"]),
        created_at=float(h["created"]),
        updated_at=float(h["updated"]),
        idempotency_key=h.get("key"),
        owner=h.get("owner"),
        lease_expires_at=_float(h.get("lease")),
        deadline_at=_float(h.get("deadline")),
        cancel_requested="cancel" in h,
        error=h.get("error"),
        waiting_for=h.get("waiting"),
        parked_until=_float(h.get("parked")),
        pinned="pinned" in h,
        fence=int(h.get("rev", 0)),
    )


def outbox_items(messages: Sequence[OutboxMessage]) -> list[str]:
    items = [str(3 * len(messages))]
    for m in messages:
        items += (m.id, repr(float(m.created_at)), _dumps(message_json(m)))
    return items


def message_json(m: OutboxMessage) -> list[Any]:
    return [m.id, m.saga_id, m.topic, m.body, m.headers, m.created_at]


def message_from_json(text: str) -> OutboxMessage:
    v = _loads(text)
    return OutboxMessage(
        id=v[0], saga_id=v[1], topic=v[2], body=v[3], headers=v[4], created_at=v[5]
    )


NO_OUTBOX = ["0"]


def loaded(saga: list[str], steps: list[str], events: list[str] | None = None) -> SagaRecord:
    record = saga_from_hash(saga)
    it = iter(steps)
    for field, value in zip(it, it, strict=True):
        name, phase = field.rsplit("|", 1)
        v = _loads(value)
        key = (name, _PHASE[phase])
        record.steps[key] = StepRecord(
            name, key[1], _STEP_STATUS[v[0]], v[1], v[2], v[3], v[4], v[5], v[6]
        )
    if events:
        for text in events:
            v = _loads(text)
            record.history.append(
                Event(v[0], _EVENT_TYPE[v[1]], v[2], None if v[3] is None else _PHASE[v[3]], *v[4:])
            )
    return record
