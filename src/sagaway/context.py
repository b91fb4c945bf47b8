"""What a step's action or compensation gets besides its input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sagaway.state import Effect, Phase


# Not frozen: a frozen dataclass costs ~1 us more per step to build. Its own __init__ for the
# compiled build, as state.py's records (see there).
@dataclass(slots=True, init=False)
class StepContext:
    """Identity of the running attempt, and what earlier steps produced.

    ``idempotency_key`` is ``"{saga_id}:{step}:{phase}"``: the same on every retry and after a
    crash, so a participant that dedupes on it applies each effect at most once. In a
    compensation, ``forward_key`` is the key the action used: look the action's effect up by it,
    and record a tombstone under it when the action never happened.
    """

    saga_id: str
    saga_name: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    forward_key: str
    results: Mapping[str, Any]
    effects: list[Effect] | None = None

    def __init__(
        self,
        saga_id: str,
        saga_name: str,
        step: str,
        phase: Phase,
        attempt: int,
        idempotency_key: str,
        forward_key: str,
        results: Mapping[str, Any],
        effects: list[Effect] | None = None,
    ) -> None:
        self.saga_id, self.saga_name, self.step = saga_id, saga_name, step
        self.phase, self.attempt, self.idempotency_key = phase, attempt, idempotency_key
        self.forward_key, self.results, self.effects = forward_key, results, effects

    def atomic(self, write: Effect) -> None:
        """Enlist ``write(conn)`` to run inside the transaction that records this step's
        outcome, so the write commits if and only if the step is recorded as done: exactly
        once, with no idempotency key needed, like a DBOS transaction step.

        ``conn`` is the saga store's connection: a ``sqlite3.Connection`` on SQLite (keep your
        tables in the same file), ``None`` on the memory store. Stores that do not share a
        database with your data (PostgreSQL through its pool, Redis) reject such a step with a
        clear error. The write runs after the action returns, on the store's writer: keep it
        short, and do not read its effect inside the action.

        A write that raises :class:`~sagaway.StepFailed` *refuses*: a business decision taken
        inside the transaction (too little stock left by the time the write runs). Nothing of
        that transition is recorded (neither the step's outcome nor any write it carried, nor
        what was merged with it: the next step's start, the saga's end), and the step fails
        with the refusal's reason exactly as if the action had raised it: not retried, earlier
        steps compensated (a pivot or retriable step: as its ``StepFailed``). In a
        compensation, a refusal is the compensation raising ``StepFailed``: retried under its
        ``compensation_retry``, then the saga stops FAILED. On the memory store (``conn`` is
        ``None``) refuse before changing anything: only the store's own records are undone.
        Any other exception is a broken write (:class:`~sagaway.EffectFailed`): the saga stops
        FAILED for an operator, the step's row left RUNNING.
        """
        if self.effects is None:
            self.effects = []
        self.effects.append(write)

    @property
    def is_compensation(self) -> bool:
        return self.phase is Phase.COMPENSATION
