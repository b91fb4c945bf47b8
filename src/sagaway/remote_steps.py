"""Remote steps and waits, as the runner drives them: a remote step's command (awaited on a
request/response transport, or sent through the outbox while the saga parks), a wait step's park,
and waking a parked saga that was taken over without its reply.
"""

from __future__ import annotations

import inspect
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaway import rules
from sagaway.clock import Clock
from sagaway.context import StepContext
from sagaway.decisions import Decision
from sagaway.definition import DEFAULT_REPLY_TIMEOUT, Saga, Step, StepKind
from sagaway.errors import DecodeError, StepFailed, UnstorableValue
from sagaway.hooks import HookChain, StepOutcome
from sagaway.rules import Next
from sagaway.state import Change, Park, Phase, SagaRecord, SagaStatus, StepRecord, StepStatus
from sagaway.step_call import call_with_timeout, describe_error
from sagaway.store._codec import check_value
from sagaway.transport.base import Command, Dispatcher

if TYPE_CHECKING:
    from sagaway.runner import Relay

FORWARD, COMPENSATION = Phase.FORWARD, Phase.COMPENSATION


class RemoteSteps:
    """The part of ``SagaRun`` that talks to participants and parks sagas."""

    saga: Saga
    record: SagaRecord
    clock: Clock
    hooks: HookChain | None
    dispatcher: Dispatcher | None
    relay: Relay | None
    parked: bool
    _resend: bool

    # Provided by SagaRun.
    def _input(self, step: Step[Any]) -> Any:
        raise NotImplementedError

    def _attempt_timeout(self, step: Step[Any]) -> float | None:
        raise NotImplementedError

    async def _commit(self, change: Change, now: float) -> None:
        raise NotImplementedError

    async def _wake_parked(self, now: float) -> Change | None:
        """A parked saga taken over without its reply: its park timed out (``claim``), or it
        was taken early (a cancel, a resume). Returns what to write next, or None if done."""
        record = self.record
        signal = rules.recorded_signal(record)
        if signal is not None:  # delivered through an engine that does not drive the saga
            if self.hooks is not None:
                self.hooks.on_resume(record, record.waiting_for or "signal")
            decision = rules.signal_arrived(self.saga, record, signal, now, recorded=True)
            if decision.next is Next.STOP:
                await self._commit(decision.change, now)
                return None
            return decision.change
        early = record.parked_until is not None and record.parked_until > now
        waits = (record.waiting_for or "").startswith(("signal:", "timer"))
        if waits and record.cancel_requested and record.status is not SagaStatus.COMPENSATING:
            return Change(unpark=True)  # cancelled: the forward loop stops before the wait
        if early:
            if record.cancel_requested and record.status is not SagaStatus.COMPENSATING:
                # The forward loop stops it before the step in flight is sent again.
                return Change(unpark=True)
            await self._commit(Change(release_lease=True), now)  # still waiting: hand it back
            self.parked = True
            if self.hooks is not None:  # every claim ends in a finish, a release or a park
                self.hooks.on_park(record, record.waiting_for or "wait")
            return None
        if self.hooks is not None:
            self.hooks.on_resume(record, f"timeout:{record.waiting_for}")
        decision = rules.timed_out(self.saga, record, now)
        self._no_reply_came(record, decision, now)
        if decision.next is Next.STOP:
            await self._commit(decision.change, now)
            return None
        self._resend = decision.next is Next.RESEND
        return decision.change

    def _no_reply_came(self, record: SagaRecord, decision: Decision, now: float) -> None:
        """The park of a remote step timed out with no reply: that attempt ended too, and the
        step hooks hear of it as they would of a reply (a wait's timeout is no attempt)."""
        row = rules.waiting_step(record)
        if row is None:
            return
        step = self.saga._by_name.get(row.name)
        if step is None or step.remote is None or step.wait is not None:
            return
        again = decision.next is Next.RESEND
        outcome = StepOutcome.RETRYING if again else StepOutcome.FAILED
        report_parked_attempt(
            self.hooks,
            self.saga,
            record,
            row.name,
            row.phase,
            row.attempts,
            outcome,
            rules.NO_REPLY,
            now,
        )

    async def _command(self, step: Step[Any], ctx: StepContext, output: Any) -> Command:
        """The command of a remote step's action or compensation (``output``: the action's,
        for a compensation payload), built by the step's payload function."""
        remote = step.remote
        assert remote is not None
        compensating = ctx.phase is COMPENSATION
        if compensating and remote.compensation_payload is not None:
            payload = remote.compensation_payload(ctx, self._input(step), output)
        else:
            payload = step.action(ctx, self._input(step))
        if inspect.isawaitable(payload):
            payload = await payload
        try:
            check_value(payload, f"the payload of remote step {step.name!r}")
        except UnstorableValue as exc:  # nothing was sent: a programming error, not uncertain
            raise DecodeError(str(exc)) from None
        command = Command(
            ctx.idempotency_key,
            self.record.id,
            self.saga.name,
            step.name,
            ctx.phase,
            ctx.attempt,
            remote.participant,
            remote.compensation if compensating and remote.compensation else remote.command,
            payload,
            ctx.forward_key if compensating else None,
        )
        if self.hooks is not None:  # before it leaves: hooks may add headers (traceparent)
            self.hooks.before_dispatch(self.record, command)
        return command

    async def _remote_call(
        self, step: Step[Any], ctx: StepContext, output: Any, failure: Exception | None
    ) -> Any:
        """Run a remote step's action or compensation over a request/response transport (or
        raise why its command could not be built): a refusal is a business failure."""
        if failure is not None:
            raise failure
        dispatcher = self.dispatcher
        if dispatcher is None:
            raise StepFailed(f"step {step.name!r} is remote and the engine has no transport")
        command = await self._command(step, ctx, output)
        forward = ctx.phase is FORWARD
        timeout = self._attempt_timeout(step) if forward else step.compensation_timeout
        reply = await call_with_timeout(dispatcher.call, (command, timeout), timeout)
        if not reply.ok:
            raise StepFailed(reply.error or f"{command.topic} was refused")
        return step.decode_output(reply.output) if forward else None

    async def _park_on(
        self,
        pending: Change,
        step: Step[Any],
        ctx: StepContext,
        forward: StepRecord | None,
        now: float,
    ) -> Exception | None:
        """Add a remote step's command (as an outbox message) and the park to ``pending``;
        or return why the command could not be built (the step then fails as a local one
        whose action raised that). A wait step parks on its signal or timer instead."""
        if step.wait is not None:
            return await self._park_wait(pending, step, ctx, now)
        try:
            output = None
            if forward is not None and forward.status is StepStatus.SUCCEEDED:
                output = step.decode_output(forward.output)
            command = await self._command(step, ctx, output)
        except Exception as exc:
            return exc
        if ctx.phase is FORWARD:
            timeout = self._attempt_timeout(step)
        else:
            timeout = step.compensation_timeout or step.timeout
        pending.outbox = (*pending.outbox, command.to_outbox(now))
        pending.park = Park(f"reply:{command.topic}", now + (timeout or DEFAULT_REPLY_TIMEOUT))
        pending.unpark = False
        return None

    async def _park_wait(
        self, pending: Change, step: Step[Any], ctx: StepContext, now: float
    ) -> Exception | None:
        """Park ``pending`` on a wait step's signal or timer (or return why its time could
        not be computed: a programming error, the step fails)."""
        wait = step.wait
        assert wait is not None
        try:
            spec = wait.until if wait.until is not None else wait.timeout
            value = spec(ctx, self._input(step)) if callable(spec) else spec
            if inspect.isawaitable(value):
                value = await value
            if isinstance(value, datetime):
                if value.tzinfo is None:
                    raise ValueError(f"{value!r} is a naive datetime: give it a timezone")
                value = value.timestamp()
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"expected seconds or a time, got a {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{value!r} is not a time")
            at = float(value) if wait.until is not None else now + max(float(value), 0.0)
        except Exception as exc:
            return DecodeError(f"wait step {step.name!r}: {describe_error(exc)}")
        deadline = self.record.deadline_at
        if deadline is not None and step.kind is not StepKind.RETRIABLE:
            at = min(at, deadline)  # the deadline ends the wait: the rules compensate then
        pending.park = Park(wait.waiting_for, at)
        pending.unpark = False
        return None

    async def _parked(self, change: Change) -> None:
        """The saga is parked (``change`` committed): publish its command, end the run."""
        self.parked = True
        if self.relay is not None and change.outbox:
            await self.relay(change.outbox)
        if self.hooks is not None and change.park is not None:
            self.hooks.on_park(self.record, change.park.waiting_for)


def report_parked_attempt(
    hooks: HookChain | None,
    saga: Saga,
    record: SagaRecord,
    step_name: str,
    phase: Phase,
    attempt: int,
    outcome: StepOutcome,
    error: str | None,
    now: float,
) -> None:
    """Tell the step hooks (metrics, tracing, logs) about a parked remote attempt that ended,
    by its reply or by the park's timeout. Its command left as the saga parked, possibly in
    another process, so ``before_step`` and ``after_step`` are both called now, on one context;
    ``seconds`` runs from the command's dispatch (the park's start: its end minus the reply
    timeout, never before the step's first start) to ``now``."""
    if hooks is None or not hooks.wants_steps:
        return
    step = saga._by_name.get(step_name)
    row = record.steps.get((step_name, phase))
    if step is None or row is None:
        return
    forward = phase is FORWARD
    timeout = step.timeout if forward else (step.compensation_timeout or step.timeout)
    sent_at = row.started_at or now
    if record.parked_until is not None:
        sent_at = max(sent_at, record.parked_until - (timeout or DEFAULT_REPLY_TIMEOUT))
    forward_key = step.key(record.id, FORWARD)
    ctx = StepContext(
        record.id,
        saga.name,
        step.name,
        phase,
        attempt,
        forward_key if forward else step.key(record.id, phase),
        forward_key,
        {},  # the saga's results are the run's business; a hook reads the record
    )
    hooks.before_step(record, ctx)
    hooks.after_step(record, ctx, outcome, error, max(now - sent_at, 0.0))
