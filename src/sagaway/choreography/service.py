"""A choreographed service: reacts to events through its inbox, publishes through its outbox.

::

    payments = EventService("payment", "sqlite:///payment.db")

    @payments.on("create-payment")
    def create_payment(ctx: EventContext) -> None:
        insert_payment(ctx.conn, ctx.payload["order_id"], ...)      # your SQL, on ctx.conn
        ctx.emit("payment-created", {"order_id": ...})               # same transaction

    # an API call that starts or continues a business transaction:
    await payments.transaction(confirm, payment_id)   # confirm(ctx, payment_id) -> result

What a delivery guarantees, whatever the bus redelivers:

* the inbox row (the participant library's table, keyed ``"{event.id}@{service}"`` so services
  sharing one database each process the event once), the handler's writes and the events it
  emits commit in ONE transaction on the service's own database;
* a redelivered event finds its inbox row and the handler does not run again (nor re-emit);
* any exception rolls everything back and propagates: the bus delivers the event again.

A handler has no business "failure reply": in a choreography a refusal is itself an event
("payment-failed") that the others react to, so it is emitted like any other outcome.

Transactions run on the participant library's worker threads (one per SQLite file).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaway.choreography import events as _events
from sagaway.choreography.events import OUTBOX, DomainEvent, check_event_type
from sagaway.errors import DefinitionError
from sagaway.participant import inbox as _inbox
from sagaway.participant.core import Participant
from sagaway.state import JSON, Phase
from sagaway.transport.base import Command

T = TypeVar("T")
EventHandler = Callable[["EventContext"], None]
Clock = Callable[[], float]


@dataclass(eq=False)
class EventContext:
    """One transaction of a service: its connection, the event being handled (None for an API
    call), and ``emit`` to publish events atomically with the transaction's writes."""

    conn: Connection
    service: str
    event: DomainEvent | None
    correlation_id: str | None
    outbox: Table
    clock: Clock
    emitted: list[DomainEvent] = field(default_factory=list)

    @property
    def payload(self) -> Any:
        return None if self.event is None else self.event.payload

    def emit(
        self, event_type: str, payload: JSON, *, correlation_id: str | None = None
    ) -> DomainEvent:
        """Write ``event_type`` to the outbox in this transaction. Its correlation id is the
        handled event's, or the one given (an API call starting a business transaction)."""
        correlation = correlation_id or self.correlation_id
        if correlation is None:
            raise DefinitionError(
                f"{self.service}: emit({event_type!r}) needs a correlation_id outside a handler"
            )
        event = DomainEvent.new(
            event_type,
            payload,
            correlation_id=correlation,
            source=self.service,
            at=self.clock(),
            causation_id=None if self.event is None else self.event.id,
        )
        _events.write(self.conn, self.outbox, event)
        self.emitted.append(event)
        return event


class EventService:
    """A service of a choreography (see the module docstring).

    ``database``: a SQLAlchemy URL, an ``Engine`` or an ``AsyncEngine`` (its pool is shared:
    handlers run through ``run_sync``) of the service's OWN database (where its state, its
    inbox and its outbox live). ``inbox`` / ``outbox``: the tables (defaults:
    ``sagaway_inbox``, ``sagaway_event_outbox``)."""

    def __init__(
        self,
        name: str,
        database: str | Engine | AsyncEngine,
        *,
        inbox: Table = _inbox.INBOX,
        outbox: Table = OUTBOX,
        clock: Clock = time.time,
    ) -> None:
        self.name = name
        self.outbox = outbox
        self.clock = clock
        self._participant = Participant(name, database, inbox=inbox)
        self._handlers: dict[str, EventHandler] = {}
        self._listeners: list[Callable[[list[DomainEvent]], None]] = []

    @property
    def engine(self) -> Engine:
        return self._participant.sync_engine

    @property
    def types(self) -> list[str]:
        """The event types this service reacts to."""
        return list(self._handlers)

    def on(self, event_type: str) -> Callable[[EventHandler], EventHandler]:
        """Declare ``fn(ctx)`` as this service's reaction to ``event_type``."""
        check_event_type(event_type)

        def register(fn: EventHandler) -> EventHandler:
            if event_type in self._handlers:
                raise DefinitionError(f"service {self.name!r} already reacts to {event_type!r}")
            self._handlers[event_type] = fn
            return fn

        return register

    def on_emit(self, listener: Callable[[list[DomainEvent]], None]) -> None:
        """Call ``listener(events)`` after a transaction that emitted events commits (the
        relay's fast path)."""
        self._listeners.append(listener)

    def create_tables(self) -> None:
        """Create the inbox and outbox tables if missing (tests, scripts; services migrate)."""
        self._participant.create_inbox()
        _events.create_outbox(self.engine, self.outbox)

    async def close(self) -> None:
        await self._participant.close()

    # -- transactions -------------------------------------------------------------------------

    async def transaction(
        self, fn: Callable[..., T], *args: Any, correlation_id: str | None = None
    ) -> T:
        """``fn(ctx, *args)`` in one transaction of the service's database; what it emits is
        published after the commit."""
        ctx_box: list[EventContext] = []

        def body(conn: Connection) -> T:
            ctx = EventContext(conn, self.name, None, correlation_id, self.outbox, self.clock)
            ctx_box.append(ctx)
            return fn(ctx, *args)

        result = await self._participant.run(body)
        self._emitted(ctx_box[-1].emitted if ctx_box else [])
        return result

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in a transaction of its own (reads, demo data)."""
        return await self._participant.run(fn, *args)

    async def deliver(self, event: DomainEvent) -> bool:
        """Handle one delivery of ``event``; False when it was handled before (or this service
        does not react to its type). Exceptions propagate: the bus redelivers."""
        handler = self._handlers.get(event.type)
        if handler is None:
            return False
        ctx = await self._participant.run(self._process, handler, event)
        if ctx is None:
            return False
        self._emitted(ctx.emitted)
        return True

    def _process(
        self, conn: Connection, handler: EventHandler, event: DomainEvent
    ) -> EventContext | None:
        if _inbox.claim(conn, self._participant.inbox, self._as_command(event)) is not None:
            return None  # delivered before: its effects and emitted events are committed
        ctx = EventContext(conn, self.name, event, event.correlation_id, self.outbox, self.clock)
        handler(ctx)
        _inbox.record(
            conn,
            self._participant.inbox,
            self.inbox_key(event),
            True,
            {"output": [e.id for e in ctx.emitted]},
        )
        return ctx

    def inbox_key(self, event: DomainEvent) -> str:
        return f"{event.id}@{self.name}"

    def _as_command(self, event: DomainEvent) -> Command:
        # The inbox is the participant library's: a row per message id. An event delivered to
        # a service is that service's "command" in the inbox's vocabulary.
        return Command(
            message_id=self.inbox_key(event),
            saga_id=event.correlation_id,
            saga_name="choreography",
            step=event.type,
            phase=Phase.FORWARD,
            attempt=1,
            participant=self.name,
            command=event.type,
            payload=None,
        )

    def _emitted(self, emitted: list[DomainEvent]) -> None:
        if emitted:
            for listener in self._listeners:
                listener(emitted)

    # -- the outbox, for the relay ------------------------------------------------------------

    async def outbox_pending(self, limit: int = 100) -> list[DomainEvent]:
        return await self._participant.run(_events.pending, self.outbox, limit)

    async def outbox_delete(self, ids: list[str]) -> int:
        return await self._participant.run(_events.remove, self.outbox, ids)

    async def outbox_count(self) -> int:
        return await self._participant.run(_events.count, self.outbox)


Subscriber = Callable[[DomainEvent], Awaitable[Any]]
