"""What the transition rules (``sagaway.rules``) take and give: what can happen to a saga (a step
succeeded or failed, a reply or a signal arrived, a park or a backoff ran out, an operator asked
for a retry) and the ``Decision`` a rule returns (the Change to write and what to do next).

Plain values, no behaviour: the runner and the engine build the first, act on the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sagaway.state import JSON, Change, Effect, Phase

if TYPE_CHECKING:
    from sagaway.transport.base import Reply

FORWARD = Phase.FORWARD


class Next(StrEnum):
    """What the caller does once the decision's Change is written (or merged into the next)."""

    CONTINUE = "continue"  # go on: the next step forward, or the next compensation
    RETRY = "retry"  # back off ``delay`` seconds, then run the same step/phase again
    COMPENSATE = "compensate"  # the Change starts compensating: undo the steps done
    RESEND = "resend"  # a remote command timed out: send it again (same key, next attempt)
    STOP = "stop"  # the Change is terminal (or FAILED for an operator): write it, done
    IGNORE = "ignore"  # nothing to do (a stale or duplicate reply): write nothing


@dataclass(slots=True)
class Decision:
    change: Change
    next: Next
    step: str | None = None
    phase: Phase = FORWARD
    delay: float = 0.0


# -- what can happen -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Succeeded:
    """A step's action (or compensation, per ``phase``) returned ``output`` (already encoded)."""

    step: str
    phase: Phase = FORWARD
    output: JSON = None
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    """A step's action or compensation ended without a result.

    ``retryable``: transient (a transport error, an exception); False for a business failure
    or a programming error. ``uncertain``: it may have taken effect (a timeout, an unstorable
    result), so it must be compensated even though it failed. ``limit``: for a compensation,
    the last attempt its retry budget allows (see ``compensation_limit``)."""

    step: str
    error: str
    phase: Phase = FORWARD
    retryable: bool = True
    uncertain: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ReplyArrived:
    """A participant's reply reached a parked saga."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Signal:
    """A named signal from outside for a saga waiting for it (``Engine.signal``): its payload
    becomes the wait step's output; with ``error`` it fails the step instead. ``signal_id``
    dedupes deliveries (recorded in the log with it)."""

    name: str
    signal_id: str
    payload: JSON = None
    error: str | None = None

    @property
    def detail(self) -> str:
        """The SIGNAL_RECEIVED event's detail: a second delivery finds it in the history."""
        return f"{self.name} {self.signal_id}"

    def envelope(self) -> dict[str, JSON]:
        return {
            "signal": self.name,
            "signal_id": self.signal_id,
            "payload": self.payload,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class SignalArrived:
    """A signal reached a saga waiting for it (``recorded``: already in its history)."""

    signal: Signal
    recorded: bool = False


@dataclass(frozen=True, slots=True)
class Timeout:
    """A parked saga's ``parked_until`` passed with no reply."""


@dataclass(frozen=True, slots=True)
class BackoffOver:
    """The backoff before retrying ``step`` ended; a cancel or the deadline may stop it now."""

    step: str
    error: str
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class RetryRequested:
    """An operator asked to resume a FAILED saga (the engine holds it)."""

    release_lease: bool = False


Happened = (
    Succeeded | Failed | ReplyArrived | SignalArrived | Timeout | BackoffOver | RetryRequested
)
