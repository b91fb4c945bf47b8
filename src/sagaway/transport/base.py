"""The dispatcher port: how the runner reaches a step that runs in another service.

One protocol for every transport. A remote step's action or compensation becomes a ``Command``
(addressed to a participant and a command name, carrying the step's idempotency key as its
``message_id``); the participant answers with a ``Reply``. Transports differ only in how the
two travel:

* request/response transports (in-process, HTTP) answer ``call`` with the reply; the runner
  awaits it under the step's timeout, after the RUNNING row that guards it is durable;
* message transports (RabbitMQ) ``publish`` the command from the outbox and deliver the reply
  later to the handler the engine registered with ``on_reply``; meanwhile the saga is parked.

A participant dedupes on ``message_id`` (its inbox), so re-sending a command after a timeout, a
crash or a broker restart never repeats its effect.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sagaway.state import JSON, OutboxMessage, Phase


class TransportError(Exception):
    """The command may or may not have reached the participant (a connection refused or
    dropped, a 5xx, a broker down): transient, retried with the same key."""


@dataclass(frozen=True, slots=True)
class Command:
    """A step's action or compensation, addressed to a participant."""

    message_id: str  # the step's idempotency key for this phase: the participant's dedupe key
    saga_id: str
    saga_name: str
    step: str
    phase: Phase
    attempt: int
    participant: str  # "inventory"
    command: str  # "reserve": routing key "inventory.reserve"
    payload: JSON
    # In a compensation: the key the forward command used (look its effect up by it, or write
    # a tombstone under it so a late forward command is refused).
    forward_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # traceparent, ...

    @property
    def topic(self) -> str:
        return f"{self.participant}.{self.command}"

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "saga_id": self.saga_id,
            "saga_name": self.saga_name,
            "step": self.step,
            "phase": str(self.phase),
            "attempt": self.attempt,
            "participant": self.participant,
            "command": self.command,
            "payload": self.payload,
            "forward_key": self.forward_key,
            "headers": dict(self.headers),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Command:
        return cls(
            message_id=str(data["message_id"]),
            saga_id=str(data["saga_id"]),
            saga_name=str(data["saga_name"]),
            step=str(data["step"]),
            phase=Phase(data["phase"]),
            attempt=int(data["attempt"]),
            participant=str(data["participant"]),
            command=str(data["command"]),
            payload=data.get("payload"),
            forward_key=data.get("forward_key"),
            headers=dict(data.get("headers") or {}),
        )

    def to_outbox(self, at: float) -> OutboxMessage:
        return OutboxMessage(
            id=self.message_id + f"#{self.attempt}",
            saga_id=self.saga_id,
            topic=self.topic,
            body=self.to_json(),
            created_at=at,
            headers=dict(self.headers),
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A participant's answer: ``ok`` with the step's ``output``, or a business failure with
    ``error`` (a message for the saga's history). Transport failures are not replies."""

    message_id: str
    saga_id: str
    step: str
    phase: Phase
    attempt: int
    participant: str
    ok: bool
    output: JSON = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "saga_id": self.saga_id,
            "step": self.step,
            "phase": str(self.phase),
            "attempt": self.attempt,
            "participant": self.participant,
            "ok": self.ok,
            "output": self.output,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reply:
        return cls(
            message_id=str(data["message_id"]),
            saga_id=str(data["saga_id"]),
            step=str(data["step"]),
            phase=Phase(data["phase"]),
            attempt=int(data["attempt"]),
            participant=str(data["participant"]),
            ok=bool(data["ok"]),
            output=data.get("output"),
            error=data.get("error"),
        )

    @classmethod
    def success(cls, command: Command, output: JSON) -> Reply:
        return cls(
            command.message_id,
            command.saga_id,
            command.step,
            command.phase,
            command.attempt,
            command.participant,
            True,
            output,
        )

    @classmethod
    def failure(cls, command: Command, error: str) -> Reply:
        return cls(
            command.message_id,
            command.saga_id,
            command.step,
            command.phase,
            command.attempt,
            command.participant,
            False,
            None,
            error,
        )


ReplyHandler = Callable[[Reply], Awaitable[None]]


class Dispatcher(ABC):  # noqa: B024 - a transport implements call or publish, not both
    """How commands reach participants. Subclasses: in-process, HTTP, RabbitMQ, stub."""

    # True: ``publish`` + ``on_reply`` (the saga parks while the command is out);
    # False: ``call`` answers with the reply.
    parks: bool = False

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (pools, channels, reply consumers). Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    async def call(self, command: Command, timeout: float | None) -> Reply:
        """Send ``command`` and return the participant's reply. Raises ``TransportError``
        (or ``TimeoutError``) when the outcome is unknown: the runner retries with the same
        ``message_id``."""
        raise NotImplementedError(f"{type(self).__name__} does not answer calls")

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish outbox messages, returning once the broker has confirmed them all (then
        the relay deletes them). Raises ``TransportError`` if any may not have been taken."""
        raise NotImplementedError(f"{type(self).__name__} does not publish")

    def on_reply(self, handler: ReplyHandler) -> None:  # noqa: B027 - optional hook
        """Register the engine's handler for replies that arrive as messages. The transport
        acknowledges a reply only after ``handler`` returns."""

    async def __aenter__(self) -> Dispatcher:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
