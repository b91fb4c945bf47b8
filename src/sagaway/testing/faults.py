"""Fault injection for saga steps, and an idempotent in-memory participant to count effects.

A saga is only as good as its failure paths, and those are the paths a normal test never takes.
``Faults`` wraps a step's action or compensation and, when armed, makes it fail transiently,
fail for business reasons, hang (to trip a timeout) or lose its response after the effect (the
case that makes idempotency keys necessary). ``EffectLedger`` plays the participant: it records
every effect under its idempotency key, so a test can assert "charged exactly once" after any
mix of retries, crashes and compensations.

Typical use::

    faults, ledger = Faults(), EffectLedger()

    @saga.step(retry=RetryPolicy(max_attempts=3, initial_delay=0))
    @faults
    async def charge(ctx: StepContext, order: Order) -> Receipt:
        return Receipt(id=ledger.apply(ctx.idempotency_key, order.total))

    @charge.compensation
    @faults
    async def refund(ctx: StepContext, order: Order, receipt: Receipt | None) -> None:
        ledger.revoke(ctx)

    faults.fail("charge", times=2)                 # two connection errors, then success
    faults.reject("charge", "Insufficient funds")   # a business failure: no retry
    faults.fail("refund", phase=Phase.COMPENSATION, times=None)  # the refund never works

Put ``@faults`` *under* ``@saga.step`` so the step sees the wrapped function (``functools.wraps``
keeps the signature and type hints the step reads its input/output types from).
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from sagaway.context import StepContext
from sagaway.errors import StepFailed
from sagaway.state import Phase

__all__ = ["EffectLedger", "Faults", "Hang", "fails_when", "flaky", "hangs"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
ExcSpec = BaseException | type[BaseException]


class Hang:
    """Blocks a step until ``release()``: long enough for its timeout, a cancel or a deadline.

    ``entered`` is set once a call is blocked, so a test can act "while the step is running"
    without guessing how long that takes. Released calls go on to run the real function.
    """

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._released = asyncio.Event()
        self.count = 0
        """How many calls have hung here (including ones a timeout cancelled)."""

    def release(self) -> None:
        self._released.set()

    async def block(self) -> None:
        self.count += 1
        self.entered.set()
        await self._released.wait()


@dataclass(eq=False)
class _Rule:
    step: str | None  # None: whichever step the wrapped function is
    phase: Phase | None  # None: either phase
    effect: Literal["raise", "raise_after", "reject", "hang"]
    times: int | None  # how many calls per idempotency key it fires for; None: every call
    exc: ExcSpec = ConnectionError
    reason: str = ""
    when: Callable[[Any], bool] | None = None
    hang: Hang | None = None
    fired: Counter[str] = field(default_factory=Counter)

    def matches(self, ctx: StepContext, value: Any) -> bool:
        if self.step is not None and self.step != ctx.step:
            return False
        if self.phase is not None and self.phase != ctx.phase:
            return False
        if self.times is not None and self.fired[ctx.idempotency_key] >= self.times:
            return False
        return self.when is None or bool(self.when(value))

    def error(self, ctx: StepContext) -> BaseException:
        if isinstance(self.exc, BaseException):
            return self.exc
        return self.exc(f"injected fault in {ctx.step} ({ctx.phase}, attempt {ctx.attempt})")


class Faults:
    """A set of armed faults, applied to every function it wraps (as a decorator).

    Rules are checked in the order they were armed; the first one that matches the call (step
    name, phase, input predicate, and ``times`` not yet used up for this idempotency key) fires.
    Counting per idempotency key means "fail twice" fails each saga twice, however many run.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.calls: Counter[str] = Counter()
        """Calls of the wrapped functions per idempotency key, faulted or not."""

    def __call__(self, fn: F) -> F:
        """Wrap a step action ``(ctx, input)`` or compensation ``(ctx, input, output)``."""

        @functools.wraps(fn)
        async def wrapper(ctx: StepContext, *args: Any) -> Any:
            self.calls[ctx.idempotency_key] += 1
            value = args[0] if args else None
            rule = next((r for r in self._rules if r.matches(ctx, value)), None)
            if rule is None:
                return await fn(ctx, *args)
            rule.fired[ctx.idempotency_key] += 1
            if rule.effect == "reject":
                raise StepFailed(rule.reason)
            if rule.effect == "raise":
                raise rule.error(ctx)
            if rule.effect == "hang":
                assert rule.hang is not None
                await rule.hang.block()
                return await fn(ctx, *args)
            await fn(ctx, *args)  # raise_after: the effect happened, the response was lost
            raise rule.error(ctx)

        return cast(F, wrapper)

    def fail(
        self,
        step: str | None = None,
        *,
        times: int | None = 1,
        exc: ExcSpec = ConnectionError,
        phase: Phase | None = Phase.FORWARD,
        after: bool = False,
    ) -> Faults:
        """Raise ``exc`` (a transient failure: retried per policy) for ``times`` calls per key.

        ``after=True`` runs the real function first and then raises: the participant applied
        the effect but the engine never heard, so the retry must be deduplicated by key.
        """
        effect: Literal["raise", "raise_after"] = "raise_after" if after else "raise"
        self._rules.append(_Rule(step, phase, effect, times, exc=exc))
        return self

    def reject(
        self,
        step: str | None = None,
        reason: str = "rejected by fault injection",
        *,
        when: Callable[[Any], bool] | None = None,
        times: int | None = None,
        phase: Phase | None = Phase.FORWARD,
    ) -> Faults:
        """Raise ``StepFailed(reason)`` (a business failure: never retried), optionally only
        for inputs where ``when(input)`` is true."""
        self._rules.append(_Rule(step, phase, "reject", times, reason=reason, when=when))
        return self

    def hang(
        self,
        step: str | None = None,
        *,
        times: int | None = None,
        phase: Phase | None = Phase.FORWARD,
    ) -> Hang:
        """Block matching calls until the returned ``Hang`` is released (or they time out)."""
        hang = Hang()
        self._rules.append(_Rule(step, phase, "hang", times, hang=hang))
        return hang

    def clear(self) -> None:
        """Disarm every fault (the ``calls`` counts are kept)."""
        self._rules.clear()


def flaky(
    fail_times: int, exc: ExcSpec = ConnectionError, *, after: bool = False
) -> Callable[[F], F]:
    """Decorator: the first ``fail_times`` calls per idempotency key raise ``exc``."""
    return Faults().fail(times=fail_times, exc=exc, phase=None, after=after)


def fails_when(predicate: Callable[[Any], bool], reason: str) -> Callable[[F], F]:
    """Decorator: raise ``StepFailed(reason)`` for inputs where ``predicate(input)`` holds."""
    return Faults().reject(reason=reason, when=predicate, phase=None)


def hangs(hang: Hang, *, times: int | None = None) -> Callable[[F], F]:
    """Decorator: block on ``hang`` (the first ``times`` calls per key, or every call)."""
    faults = Faults()
    faults._rules.append(_Rule(None, None, "hang", times, hang=hang))
    return faults


class EffectLedger:
    """An in-memory participant that applies each effect once per idempotency key.

    It behaves like the participant a saga needs (dedupe on the key; a compensation for an
    action that never happened leaves a tombstone so the late action is refused) and records
    everything a test wants to assert: calls, duplicates, effects live or compensated. With
    ``dedupe=False`` it applies every call, to show what a non-idempotent participant would do.
    """

    def __init__(self, *, dedupe: bool = True) -> None:
        self.dedupe = dedupe
        self.calls: Counter[str] = Counter()
        """Every invocation per key (forward and compensation keys alike)."""
        self.applied: Counter[str] = Counter()
        """How many times each forward key's effect took effect (1 when deduplicated)."""
        self.values: dict[str, Any] = {}
        self.compensated: set[str] = set()
        """Forward keys whose effect was undone."""
        self.tombstones: set[str] = set()
        """Forward keys compensated before their action ever arrived."""

    def apply(self, key: str, value: Any = None) -> Any:
        """Apply the effect for ``key`` (once); return the value recorded for it."""
        self.calls[key] += 1
        if key in self.tombstones:
            return None
        if self.dedupe and self.applied[key]:
            return self.values[key]
        self.applied[key] += 1
        self.values.setdefault(key, value)
        return value

    def revoke(self, ctx: StepContext) -> bool:
        """Compensate the action of ``ctx``'s step (by ``ctx.forward_key``), once per key.

        Returns True if an effect was undone, False if there was none (a tombstone is left).
        """
        self.calls[ctx.idempotency_key] += 1
        key = ctx.forward_key
        if key in self.compensated or key in self.tombstones:
            return False
        if self.applied[key]:
            self.compensated.add(key)
            return True
        self.tombstones.add(key)
        return False

    @property
    def duplicates(self) -> dict[str, int]:
        """Keys called more than once, with how many extra calls the dedupe absorbed."""
        return {key: n - 1 for key, n in self.calls.items() if n > 1}

    @property
    def live(self) -> dict[str, Any]:
        """Effects applied and not compensated: what the participant's state now reflects."""
        return {
            key: self.values.get(key)
            for key, n in self.applied.items()
            if n and key not in self.compensated
        }

    def assert_exactly_once(self, *keys: str, calls: Mapping[str, int] | None = None) -> None:
        """Assert that the effects applied are exactly those of ``keys``, each applied once,
        and that each key was called as often as ``calls`` says (1 for a key it omits).

        All three are needed: deduplication caps ``applied`` at 1, so only the call count sees
        a step that was run again after its outcome was recorded, and only the set of keys
        sees a retry that came with a new idempotency key (a second, separate effect).
        ``calls`` may also name compensation keys; raises AssertionError listing every
        mismatch.
        """
        expected_calls = {key: 1 for key in keys} | dict(calls or {})
        problems: list[str] = []
        wrong = {key: self.applied[key] for key in keys if self.applied[key] != 1}
        if wrong:
            problems.append(f"effects not applied exactly once (key: times): {wrong}")
        extra = sorted(key for key, n in self.applied.items() if n and key not in keys)
        if extra:
            problems.append(f"effects applied under unexpected keys: {extra}")
        miscounted = {
            key: (self.calls[key], n) for key, n in expected_calls.items() if self.calls[key] != n
        }
        if miscounted:
            problems.append(f"calls per key differ (key: (made, expected)): {miscounted}")
        if problems:
            raise AssertionError("; ".join(problems))

    def assert_not_applied(self, *keys: str) -> None:
        """Assert no effect is live under these keys (never applied, or compensated)."""
        live = self.live
        wrong = [key for key in keys if key in live]
        if wrong:
            raise AssertionError(f"effects still applied: {wrong}")
