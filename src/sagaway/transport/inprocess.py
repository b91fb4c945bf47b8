"""In-process transport: the participant runs in the engine's own process, no network.

What ``make run`` uses: one process, and each remote step still goes through the participant's
inbox and its own transaction, so the saga behaves exactly as it does over HTTP or RabbitMQ
(same dedupe, same tombstones, same replies), just without the wire.

Failures map as on the wire: an unknown participant or command is a business failure (HTTP
404), an exception from the participant (its database down, a bug) is a ``TransportError``
(HTTP 503: retried with the same ``message_id``), and the call's ``timeout`` raises
``TimeoutError``. A handler that outlives its timeout keeps running on its thread and commits;
the retry then finds its inbox row and gets the recorded reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from sagaway.participant.core import Participant, UnknownCommand
from sagaway.transport.base import Command, Dispatcher, Reply, TransportError


class InProcessDispatcher(Dispatcher):
    """Calls ``participant.handle`` directly. ``participants``: the participants, or a
    mapping from the name commands address to the participant."""

    parks = False

    def __init__(
        self, participants: Iterable[Participant] | Mapping[str, Participant] = ()
    ) -> None:
        self.participants: dict[str, Participant] = {}
        if isinstance(participants, Mapping):
            self.participants.update(participants)
        else:
            for participant in participants:
                self.add(participant)

    def add(self, participant: Participant, name: str | None = None) -> None:
        """Route commands for ``name`` (default: the participant's name) to ``participant``."""
        self.participants[name or participant.name] = participant

    async def call(self, command: Command, timeout: float | None) -> Reply:
        participant = self.participants.get(command.participant)
        if participant is None:
            return Reply.failure(
                command,
                f"no participant {command.participant!r} in this process "
                f"(known: {', '.join(sorted(self.participants)) or 'none'})",
            )
        try:
            if timeout is None:
                return await participant.handle(command)
            async with asyncio.timeout(timeout):
                return await participant.handle(command)
        except UnknownCommand as exc:
            return Reply.failure(command, str(exc))
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise TransportError(
                f"{command.topic} failed in participant {command.participant!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        """Participants belong to whoever created them: nothing to release here."""
