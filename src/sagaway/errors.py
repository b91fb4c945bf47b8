"""The library's error hierarchy.

Adapters translate driver errors (sqlite3, asyncpg, redis) into these at their edge, so code built
on sagaway never has to know which backend it runs on.
"""

from __future__ import annotations


class SagawayError(Exception):
    """Base class of every error raised by sagaway."""


class DefinitionError(SagawayError):
    """A saga definition is malformed; raised when it is declared, not when it runs."""


class UnknownSagaError(SagawayError):
    """A saga instance names a definition (name, version) this engine does not know."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(
            f"saga definition {name!r} version {version} is not registered with this engine"
        )
        self.name = name
        self.version = version


class InvalidInput(SagawayError, ValueError):
    """A saga's input does not fit the type its first step declares; raised by
    ``engine.start`` before anything is recorded."""


class DecodeError(SagawayError, TypeError):
    """A step's input or output does not fit the type the step declares (or a value read
    back from the log no longer does).

    A programming error, not a transient one: the step fails at once, without retries, and the
    saga compensates.
    """


class EngineNotOpen(SagawayError, RuntimeError):
    """The engine was used before ``open()`` (or after ``close()``)."""

    def __init__(self) -> None:
        super().__init__(
            "the engine is not open: use `async with Engine(...) as engine:` "
            "or `await engine.open()` first"
        )


class StepFailed(SagawayError):
    """A business failure: the step must not be retried and the saga compensates.

    Raise it from a step action with a human-readable reason, e.g. ``StepFailed("Insufficient
    funds")``. Any other exception counts as transient and follows the step's retry policy.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StepTimeout(SagawayError):
    """A step's attempt ran longer than its timeout; its effect is uncertain."""


class SagaNotFound(SagawayError):
    """No saga instance with that id exists in the store."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"saga {saga_id!r} not found")
        self.saga_id = saga_id


class InvalidTransition(SagawayError):
    """An admin action or transition is not allowed from the saga's current status."""


class UnstorableValue(SagawayError, ValueError):
    """A value the saga log cannot store: not JSON (``object()``, ``bytes``, ``Decimal``...), a
    float JSON cannot spell (NaN, infinity), or a string with a NUL character or a lone
    surrogate (PostgreSQL refuses both). Raised before anything is written, on every store."""


class CancelRefused(InvalidTransition):
    """A cancel that would not take effect: the saga has finished, is already compensating, or
    has started the last step a cancel can stop before. The refusal is in the saga's history
    (a ``cancel_refused`` event); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotWaiting(InvalidTransition):
    """A signal for a saga that does not wait for it: finished, waiting for something else
    (``waiting_for``: "signal:<name>", "timer", "reply:<topic>", or None), or not there yet.
    Nothing was recorded; the message says what the saga waits for."""

    def __init__(self, saga_id: str, signal: str, reason: str, waiting_for: str | None) -> None:
        super().__init__(reason)
        self.saga_id, self.signal, self.reason = saga_id, signal, reason
        self.waiting_for = waiting_for


class CancelPending(SagawayError):
    """A ``Change`` with ``unless_cancelled`` met a cancel already recorded: nothing was
    written. The runner then compensates instead of starting the step."""


class StoreError(SagawayError):
    """The saga store failed (connection lost, disk full...): the transition was not recorded."""


class EffectFailed(StoreError):
    """A write a step enlisted with ``ctx.atomic()`` raised: its transition was not recorded.

    Such writes must not fail (validate in the action, write idempotently); when one does, the
    saga stops FAILED for an operator, whose retry re-runs the step with the same key. A write
    that raises :class:`StepFailed` is a refusal instead (:class:`EffectRefused`).
    """


class EffectRefused(StepFailed):
    """A write a step enlisted with ``ctx.atomic()`` raised :class:`StepFailed`: a business
    refusal taken inside the transaction (too little stock, too little money). The transition
    and every write it carried were not recorded, as for :class:`EffectFailed`; the runner then
    fails the step with ``reason`` as if its action had raised that ``StepFailed``."""


class LeaseLost(StoreError):
    """This engine no longer owns the saga's lease; another engine took it over.

    The engine stops driving the saga immediately: writing anything more could race the new owner.
    """


class TakeConflict(LeaseLost):
    """A ``Change.take`` found the saga's row written since it was read (another engine took
    the saga, a cancel was recorded...): nothing was written. The caller reads the saga again
    and decides anew (a signal already applied is a duplicate; else it may not wait any more)."""
