"""Shared builders for the engine's unit tests: a configurable saga whose steps trace what they
do, apply their effects to an EffectLedger, and can be faulted per test with ``Faults``."""

from typing import Any

from pydantic import BaseModel

from sagaway import RetryPolicy, Saga, StepContext, StepKind
from sagaway.testing import EffectLedger, Faults

FAST = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0)
"""Retries without backoff, so failure-path tests cost no time at all."""


class Order(BaseModel):
    id: str
    amount: int


class Receipt(BaseModel):
    step: str
    key: str
    amount: int


class Kit:
    """A saga named ``name`` with steps ``steps``; every action records ``do:<step>`` in
    ``trace`` and its effect in ``ledger``; every compensation records ``undo:<step>``."""

    def __init__(
        self,
        name: str = "order",
        steps: tuple[str, ...] = ("a", "b", "c"),
        *,
        kinds: dict[str, str] | None = None,
        retry: RetryPolicy = FAST,
        compensation_retry: RetryPolicy = FAST,
        timeout: float | None = None,
        on_uncertain: str = "retry",
        deadline: float | None = None,
        version: int = 1,
        trace: list[Any] | None = None,
    ) -> None:
        self.saga = Saga(name, version=version, deadline=deadline)
        self.faults = Faults()
        self.ledger = EffectLedger()
        self.trace: list[Any] = [] if trace is None else trace
        self.contexts: list[StepContext] = []
        self.results_seen: list[dict[str, Any]] = []  # ctx.results as each action saw them
        self.undo_args: list[tuple[StepContext, Any, Any]] = []
        for step_name in steps:
            kind = StepKind((kinds or {}).get(step_name, "compensatable"))
            self._add(step_name, kind, retry, compensation_retry, timeout, on_uncertain)

    def _add(
        self,
        step_name: str,
        kind: StepKind,
        retry: RetryPolicy,
        compensation_retry: RetryPolicy,
        timeout: float | None,
        on_uncertain: str,
    ) -> None:
        async def action(ctx: StepContext, order: Order) -> Receipt:
            self.trace.append(f"do:{ctx.step}")
            self.contexts.append(ctx)
            self.results_seen.append(dict(ctx.results))
            self.ledger.apply(ctx.idempotency_key, order.amount)
            return Receipt(step=ctx.step, key=ctx.idempotency_key, amount=order.amount)

        async def undo(ctx: StepContext, order: Order, receipt: Receipt | None) -> None:
            self.trace.append(f"undo:{ctx.step}")
            self.undo_args.append((ctx, order, receipt))
            self.ledger.revoke(ctx)

        step = self.saga.step(
            name=step_name,
            kind=kind,
            retry=retry,
            timeout=timeout,
            on_uncertain=on_uncertain,
            compensation_retry=compensation_retry,
        )(self.faults(action))
        if kind is StepKind.COMPENSATABLE:
            step.compensation(self.faults(undo))

    def key(self, saga_id: str, step: str, phase: str = "forward") -> str:
        return f"{saga_id}:{step}:{phase}"
