"""Domain events and the service's own event outbox.

A choreographed service publishes what happened to it ("order-confirmed") as a ``DomainEvent``.
The event is INSERTed into the ``sagaway_event_outbox`` table of the service's OWN database, in
the same transaction as the state change it announces: either both commit or neither does, so
no event is announced for a change that rolled back and no committed change goes unannounced.
A relay (``sagaway.choreography.relay``) publishes the rows afterwards and deletes them once the
bus confirmed them; publishing is at least once, and every receiver dedupes on ``event.id``.

The event's ``type`` is its routing key on the bus. It is one word (letters, digits, ``-`` and
``_``, no dots): over RabbitMQ the monitor binds ``*`` on the ``saga_events`` exchange, which
matches every one-word key and none of the engine's two-word command keys (``payment.start``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Column, Float, MetaData, String, Table, delete, insert, select
from sqlalchemy.engine import Connection, Engine

from sagaway.errors import DefinitionError
from sagaway.state import JSON as JSONValue
from sagaway.state import new_saga_id

OUTBOX_TABLE = "sagaway_event_outbox"
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def check_event_type(event_type: str) -> str:
    """``event_type`` if it is a valid one-word routing key, else ``DefinitionError``."""
    if not _EVENT_TYPE.match(event_type):
        raise DefinitionError(
            f"event type {event_type!r} must be one word of letters, digits, '-' or '_' "
            "(it is the routing key; dots are the engine's command keys)"
        )
    return event_type


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """Something that happened in one service, in one business transaction (``correlation_id``).

    ``id``: unique per event, the receivers' dedupe key (the same on every re-publish). ``new``
    makes it time-ordered, as saga ids are (the millisecond, then 80 random bits), so that the
    receivers' inboxes, keyed by it, take a batch's rows on one leaf instead of one each.
    ``source``: the service that emitted it. ``causation_id``: the event whose handling
    emitted this one (None for one emitted by an API call)."""

    id: str
    type: str
    correlation_id: str
    source: str
    payload: JSONValue
    at: float
    causation_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        event_type: str,
        payload: JSONValue,
        *,
        correlation_id: str,
        source: str,
        at: float,
        causation_id: str | None = None,
    ) -> DomainEvent:
        return cls(
            id=new_saga_id(time.time()),
            type=check_event_type(event_type),
            correlation_id=correlation_id,
            source=source,
            payload=payload,
            at=at,
            causation_id=causation_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "correlation_id": self.correlation_id,
            "source": self.source,
            "payload": self.payload,
            "at": self.at,
            "causation_id": self.causation_id,
            "headers": dict(self.headers),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainEvent:
        return cls(
            id=str(data["id"]),
            type=check_event_type(str(data["type"])),
            correlation_id=str(data["correlation_id"]),
            source=str(data["source"]),
            payload=data.get("payload"),
            at=float(data["at"]),
            causation_id=data.get("causation_id"),
            headers=dict(data.get("headers") or {}),
        )


def outbox_table(metadata: MetaData, name: str = OUTBOX_TABLE) -> Table:
    """The event outbox on ``metadata`` (a service's own ``Base.metadata``, for Alembic)."""
    return Table(
        name,
        metadata,
        Column("id", String(64), primary_key=True),
        Column("type", String(100), nullable=False),
        Column("correlation_id", String(255), nullable=False, index=True),
        Column("body", JSON, nullable=False),
        # POSIX seconds: the relay publishes oldest first, so one service's events keep
        # their order on the bus.
        Column("created_at", Float, nullable=False, index=True),
    )


OUTBOX = outbox_table(MetaData())
"""The default event outbox table (``sagaway_event_outbox``)."""


def create_outbox(engine: Engine, table: Table = OUTBOX) -> None:
    """Create the outbox table if missing (tests, scripts; services migrate)."""
    table.create(engine, checkfirst=True)


def write(conn: Connection, table: Table, event: DomainEvent) -> None:
    """Add ``event`` to the outbox in ``conn``'s transaction (the state change's)."""
    conn.execute(
        insert(table),
        {
            "id": event.id,
            "type": event.type,
            "correlation_id": event.correlation_id,
            "body": event.to_json(),
            "created_at": event.at,
        },
    )


def pending(conn: Connection, table: Table, limit: int) -> list[DomainEvent]:
    """The oldest ``limit`` events not yet confirmed by the bus."""
    rows = conn.execute(
        select(table.c.body).order_by(table.c.created_at, table.c.id).limit(limit)
    ).all()
    return [DomainEvent.from_json(row.body) for row in rows]


def remove(conn: Connection, table: Table, ids: Sequence[str]) -> int:
    """Delete published events; returns how many were still there."""
    if not ids:
        return 0
    return int(conn.execute(delete(table).where(table.c.id.in_(list(ids)))).rowcount or 0)


def count(conn: Connection, table: Table) -> int:
    return len(conn.execute(select(table.c.id)).all())
