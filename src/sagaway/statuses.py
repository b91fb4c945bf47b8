"""Saga and step statuses, the events of the timeline, and which saga status may follow which.

The engine's hot path names the members it uses through the module constants below (see there
why); everything else reads them off their enum. ``sagaway.state`` re-exports the enums.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from sagaway.errors import InvalidTransition


class SagaStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    SUCCEEDED = "SUCCEEDED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """Terminal for the engine: nothing runs it any more (FAILED waits for an operator)."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """An engine should be driving it: these are what recovery claims."""
        return self in ACTIVE_STATUSES


_TERMINAL = TERMINAL = frozenset({SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED})
ACTIVE_STATUSES: tuple[SagaStatus, ...] = (
    SagaStatus.PENDING,
    SagaStatus.RUNNING,
    SagaStatus.COMPENSATING,
)
# What retention may remove: sagas that are over for good. FAILED is terminal for the engine but
# not for an operator (``sagaway retry`` takes it on again), so it is kept until someone acts.
PRUNABLE_STATUSES: tuple[SagaStatus, ...] = (SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED)


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    SKIPPED = "SKIPPED"


class Phase(StrEnum):
    FORWARD = "forward"
    COMPENSATION = "compensation"


FORWARD: Final = Phase.FORWARD
COMPENSATION: Final = Phase.COMPENSATION


class EventType(StrEnum):
    """What the timeline shows; one event per durable transition (plus admin requests)."""

    SAGA_CREATED = "saga_created"  # queued for a worker (engine started with execute=False)
    SAGA_STARTED = "saga_started"
    STEP_STARTED = "step_started"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_RETRYING = "step_retrying"
    STEP_FAILED = "step_failed"
    STEP_RESUMED = "step_resumed"
    COMPENSATION_STARTED = "compensation_started"
    STEP_COMPENSATED = "step_compensated"
    COMPENSATION_RETRYING = "compensation_retrying"
    COMPENSATION_FAILED = "compensation_failed"
    SAGA_SUCCEEDED = "saga_succeeded"
    SAGA_COMPENSATED = "saga_compensated"
    SAGA_FAILED = "saga_failed"
    SAGA_CLAIMED = "saga_claimed"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_REFUSED = "cancel_refused"  # too late to take effect; detail says why
    DEADLINE_EXPIRED = "deadline_expired"
    RETRY_REQUESTED = "retry_requested"
    # A signal reached a saga waiting for it; detail: "<name> <signal id>" (what dedupes it).
    SIGNAL_RECEIVED = "signal_received"


# The members the engine names on every saga's path, as module constants. Read off its class,
# a member goes through the slot of EnumType.__getattr__ (~60 ns in CPython 3.11, ~350
# instructions in the compiled build, where a Final module constant is a C static): ~30 reads a
# saga were ~4% of its instructions.
SAGA_PENDING: Final = SagaStatus.PENDING
SAGA_RUNNING: Final = SagaStatus.RUNNING
SAGA_COMPENSATING: Final = SagaStatus.COMPENSATING
SAGA_SUCCEEDED: Final = SagaStatus.SUCCEEDED
SAGA_COMPENSATED: Final = SagaStatus.COMPENSATED
STEP_RUNNING: Final = StepStatus.RUNNING
STEP_FAILED: Final = StepStatus.FAILED
STEP_SUCCEEDED: Final = StepStatus.SUCCEEDED
STEP_COMPENSATING: Final = StepStatus.COMPENSATING
STEP_COMPENSATED: Final = StepStatus.COMPENSATED
ON_SAGA_STARTED: Final = EventType.SAGA_STARTED
ON_STEP_STARTED: Final = EventType.STEP_STARTED
ON_STEP_SUCCEEDED: Final = EventType.STEP_SUCCEEDED
ON_STEP_FAILED: Final = EventType.STEP_FAILED
ON_COMPENSATION_STARTED: Final = EventType.COMPENSATION_STARTED
ON_STEP_COMPENSATED: Final = EventType.STEP_COMPENSATED
ON_SAGA_SUCCEEDED: Final = EventType.SAGA_SUCCEEDED
ON_SAGA_COMPENSATED: Final = EventType.SAGA_COMPENSATED


_ALLOWED: Final[dict[SagaStatus, frozenset[SagaStatus]]] = {  # (Final: a C static, compiled)
    SagaStatus.PENDING: frozenset(
        {SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.SUCCEEDED}
    ),
    # RUNNING -> COMPENSATED when the first step fails: there is nothing to undo.
    SagaStatus.RUNNING: frozenset(
        {
            SagaStatus.SUCCEEDED,
            SagaStatus.COMPENSATING,
            SagaStatus.COMPENSATED,
            SagaStatus.FAILED,
        }
    ),
    SagaStatus.COMPENSATING: frozenset({SagaStatus.COMPENSATED, SagaStatus.FAILED}),
    # Only an operator's retry leaves FAILED: back to compensating, or forward past a pivot.
    SagaStatus.FAILED: frozenset({SagaStatus.COMPENSATING, SagaStatus.RUNNING}),
    SagaStatus.SUCCEEDED: frozenset(),
    SagaStatus.COMPENSATED: frozenset(),
}


def check_saga_transition(current: SagaStatus, new: SagaStatus) -> None:
    """Raise InvalidTransition unless the saga may move from ``current`` to ``new``."""
    if current != new and new not in _ALLOWED[current]:
        raise InvalidTransition(f"saga cannot go from {current} to {new}")
