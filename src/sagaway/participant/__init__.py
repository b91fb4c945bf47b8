"""The participant side of remote saga steps: handlers per command, an inbox in the
participant's own database, and the FastAPI router that serves them over HTTP
(``sagaway.participant.http``, imported on its own so the core needs no FastAPI), or the
RabbitMQ consumer (``sagaway.participant.rabbitmq``, imported on its own: needs aio-pika)."""

from sagaway.participant.core import Handler, Participant, UnknownCommand
from sagaway.participant.inbox import (
    INBOX,
    INBOX_TABLE,
    TOMBSTONE_ERROR,
    Recorded,
    create_inbox,
    create_inbox_async,
    inbox_table,
    open_engine,
)

__all__ = [
    "INBOX",
    "INBOX_TABLE",
    "TOMBSTONE_ERROR",
    "Handler",
    "Participant",
    "Recorded",
    "UnknownCommand",
    "create_inbox",
    "create_inbox_async",
    "inbox_table",
    "open_engine",
]
