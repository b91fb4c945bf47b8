"""Choreography: services publish domain events and react to each other's, no orchestrator.

* ``EventService``: a service's handlers (``@service.on("order-confirmed")``), deduped through
  the participant library's inbox, and ``ctx.emit`` into the service's own outbox table, in the
  same transaction as its state change (``sagaway.choreography.service``);
* ``EventBus``: ``InProcessBus`` here, ``RabbitBus`` in ``sagaway.choreography.rabbitmq``
  (imported on its own: needs aio-pika); ``Relay`` publishes a service's outbox on a bus;
* ``Monitor``: records every event of a correlation into the saga log as one saga (same
  list/show API, CLI and UI timeline as an orchestrated saga), flags one past its deadline.

See docs/choreography.md.
"""

from sagaway.choreography.bus import EventBus, InProcessBus, Relay, Subscription
from sagaway.choreography.events import (
    OUTBOX,
    OUTBOX_TABLE,
    DomainEvent,
    check_event_type,
    create_outbox,
    outbox_table,
)
from sagaway.choreography.monitor import Choreography, Monitor
from sagaway.choreography.service import EventContext, EventService

__all__ = [
    "OUTBOX",
    "OUTBOX_TABLE",
    "Choreography",
    "DomainEvent",
    "EventBus",
    "EventContext",
    "EventService",
    "InProcessBus",
    "Monitor",
    "Relay",
    "Subscription",
    "check_event_type",
    "create_outbox",
    "outbox_table",
]
