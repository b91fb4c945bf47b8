"""Drives one saga instance from its log record to a terminal status.

The write-ahead protocol lives here. Before an action or compensation runs, a Change recording it
RUNNING/COMPENSATING is committed; its outcome goes into the *next* commit, merged with whatever
must be durable before the next action (the next step's RUNNING row, or the saga's final status).
Nothing can happen between one step's outcome and the next step's start, so merging them loses
no information and halves the number of durable writes per saga.

The same code resumes a saga after a crash: rows already SUCCEEDED/COMPENSATED are skipped, a row
found RUNNING/COMPENSATING is *uncertain* and is retried with the same idempotency key (or
compensated, per the step's ``on_uncertain``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import monotonic, perf_counter, time
from types import CoroutineType
from typing import Any, Final

from sagaway import rules
from sagaway.clock import Clock, SystemClock
from sagaway.context import StepContext
from sagaway.definition import Saga, Step
from sagaway.errors import (
    CancelPending,
    DecodeError,
    EffectFailed,
    EffectRefused,
    StepFailed,
    UnstorableValue,
)
from sagaway.hooks import HookChain, StepOutcome
from sagaway.remote_steps import RemoteSteps
from sagaway.rules import RETRIABLE, RETRY, STOP, Next, step_succeeded, stop_reason
from sagaway.state import (
    Change,
    Event,
    EventType,
    OutboxMessage,
    Phase,
    SagaRecord,
    StepRecord,
    StepStatus,
    apply_change,
    check_saga_transition,
)
from sagaway.statuses import (
    COMPENSATION,
    FORWARD,
    ON_COMPENSATION_STARTED,
    ON_SAGA_STARTED,
    ON_STEP_STARTED,
    SAGA_COMPENSATING,
    SAGA_PENDING,
    SAGA_RUNNING,
    STEP_COMPENSATED,
    STEP_COMPENSATING,
    STEP_RUNNING,
    STEP_SUCCEEDED,
)
from sagaway.step_call import (
    StepResults,
    call_with_timeout,
    describe_error,
    resume_with_timeout,
    storable_output,
)
from sagaway.store._codec import printable
from sagaway.store._memory_commit import MemoryCommit
from sagaway.store.base import SagaStore, TransactionalStore
from sagaway.transport.base import Dispatcher, TransportError

log = logging.getLogger("sagaway.runner")

CommitListener = Callable[[SagaRecord, Change], None]
Relay = Callable[[tuple[OutboxMessage, ...]], Awaitable[None]]
"""Publishes the outbox messages of a transition just committed (the engine's relay)."""
SUCCEEDED: Final = StepOutcome.SUCCEEDED
# The functions and type the hot path calls, as Final names: compiled, a Final is a C static,
# where an imported name is looked up in the module's dict at every use (~110 instructions).
_time: Final = time
_monotonic: Final = monotonic
_next: Final = next
_COROUTINE: Final = CoroutineType


_UNDECODED: Final = object()  # SagaRun._input_adapter before the input is first decoded
_RETURNED: Final = object()  # what a step's first send finds when its action did not suspend


async def _returning(run: SagaRun, called: Awaitable[Any]) -> None:
    """``await called``, its value left in ``run._returned``: what the runner steps by hand to
    an action's first suspension (see ``_run_step``). Compiled, neither the step nor the await
    raises a StopIteration when the action returns without suspending (most actions on a local
    store): an interpreted ``first_send`` caught one, ~1.5k instructions a step."""
    run._returned = await called


class _Halted(Exception):
    """The saga stopped FAILED mid-flight (see ``SagaRun._halt``)."""


class _Refused(Exception):
    """A ``ctx.atomic()`` write refused the transition ``change`` carried it in (it raised
    ``StepFailed``): nothing of ``change`` was written (see ``SagaRun._refused``)."""

    def __init__(self, change: Change, reason: str) -> None:
        super().__init__(reason)
        self.change, self.reason = change, reason


class SagaRun(RemoteSteps):
    """One saga being driven by one engine, under that engine's lease."""

    def __init__(
        self,
        saga: Saga,
        record: SagaRecord,
        store: SagaStore,
        owner: str,
        clock: Clock,
        listener: CommitListener | None = None,
        prewritten: bool = False,
        hooks: HookChain | None = None,
        dispatcher: Dispatcher | None = None,
        relay: Relay | None = None,
        carry: Change | None = None,
        shared: bool = False,
    ) -> None:
        self.saga, self.record, self.store = saga, record, store
        self.owner, self.clock, self.listener = owner, clock, listener
        # None when the engine has no hook: then no hook is called and no time is measured.
        self.hooks = hooks
        # Likewise per kind: the chain, or None when no hook reads steps (commits), so a metrics
        # hook that ignores before_step is not called for it, and no one's clock is read.
        # A hook's sink (the metrics') is appended to here, without calling the chain.
        if hooks is None:
            self._hooks_steps = self._hooks_commit = self._commit_sink = None
            self._forward_ok = None
            self._hooks_before = False
        else:
            self._hooks_steps = hooks if hooks.wants_steps else None
            self._hooks_before = hooks.wants_before_step
            self._hooks_commit = hooks if hooks.wants_commits else None
            self._forward_ok = hooks.forward_ok  # (the compensations' sink: read there)
            self._commit_sink = hooks.commit_sink
        # True when the engine wrote step 0 RUNNING together with the saga: run it, don't redo it.
        self._prewritten = prewritten
        self._results = StepResults(saga, record)
        # The decoded input (see _input): the adapter it was decoded with and its value, and,
        # for a saga whose steps take it as different types, the others by adapter.
        self._input_adapter: object = _UNDECODED
        self._input_value: Any = None
        self._inputs: dict[object, Any] | None = None
        # Remote steps: request/response transports are awaited like a local action; on a
        # message transport (``parks``) the command goes out through the outbox and the run
        # ends parked, until a reply or the park's timeout brings the saga back.
        self.dispatcher, self.relay = dispatcher, relay
        self.parked = False  # the run ended with the saga parked (not finished)
        # An outcome decided before this run (a reply applied by the engine): written with the
        # next transition, as the runner merges its own step outcomes.
        self._carry = carry
        # The lease, when the carried outcome takes it (``Change.take``): goes with the run's
        # first write, whichever it is, and only that one.
        self._take = None if carry is None else carry.take
        self._resend = False  # the park timed out: send the step in flight again
        # ``record`` is the one the store keeps (``SagaStore.running_record``): its commit
        # applies each change to it, so the run does not apply it again.
        self._shared = shared
        # The system clock read directly (see _now), a clock of a test's through its method.
        self._system_time = type(clock) is SystemClock
        # The store's commit as a plain call, when it has one (SagaStore.inline_commit).
        self._commit_now = store.inline_commit
        self.task: asyncio.Task[None] | None = None  # the engine's task driving this run
        # (29 attributes at most, these included: past that, the pure build keeps a dict per
        # instance instead of its shared-key values (CPython 3.11's limit, less one), and
        # every attribute read costs more: +9k instructions a saga at 30 or 31.)
        self._returned: Any = None  # a forward step's value, from _returning
        # A step that enlisted ctx.atomic() writes succeeded only once they commit (they may
        # refuse): its hooks hear of it then (see _report_held), not when its action returns.
        self._held: tuple[Step[Any], StepContext, float] | None = None

    @property
    def parks(self) -> bool:
        """Remote steps go out as messages (a message transport): the saga parks for replies.
        (Read only for a remote step: a property, not one attribute more, see ``task``.)"""
        return self.dispatcher is not None and self.dispatcher.parks

    @property
    def hands_over_record(self) -> bool:
        """Nothing but this run holds a change once it is written, nor its record once the
        saga is finished: the store's commit is the memory store's own (``MemoryCommit``),
        which keeps neither (a finished saga compact); no listener or hook is handed them.
        (The contexts' results read the record's steps.)"""
        return (
            isinstance(self._commit_now, MemoryCommit)
            and self.listener is None
            and self.hooks is None
        )

    @property
    def cancel_requested(self) -> bool:
        """A cancel is recorded (the rules read it from the record, as the store keeps it)."""
        return self.record.cancel_requested

    @cancel_requested.setter
    def cancel_requested(self, value: bool) -> None:
        self.record.cancel_requested = value

    # -- plumbing ---------------------------------------------------------------------------

    async def _commit(self, change: Change, now: float) -> None:
        """Write ``change`` durably, at ``now``: the time the transition was built at (one clock
        read per transition, taken after the await that produced it, rather than one per row,
        event and write: nothing can happen in between, as no await separates them)."""
        if self._commit_now is not None:  # (a store whose commit never suspends: see there)
            self._write(change, now)
            return
        began = self._before_write(change)
        try:
            await self.store.commit(self.record.id, self.owner, change, now)
        except EffectRefused as exc:
            raise _Refused(change, exc.reason) from exc
        except EffectFailed as exc:
            self._report_held(StepOutcome.FAILED, printable(str(exc)))
            await self._halt(printable(str(exc)))
            raise _Halted from exc
        except BaseException as exc:  # not recorded (cancelled, the lease lost, the store)
            cancelled = isinstance(exc, asyncio.CancelledError)
            self._report_held(StepOutcome.FAILED, "cancelled" if cancelled else describe_error(exc))
            raise
        self._after_write(change, now, began)

    def _write(self, change: Change, now: float) -> None:
        """``_commit`` on a store with a plain-call commit (``self._commit_now`` not None), as a
        plain call: the hot paths call this directly, not a coroutine built and driven for
        every transition of every saga. The same write, checks, hooks and halting."""
        commit_now = self._commit_now
        assert commit_now is not None
        began = self._before_write(change)
        try:
            if isinstance(commit_now, MemoryCommit):  # a native call (see MemoryCommit)
                commit_now.commit(self.record.id, self.owner, change, now)
            else:
                commit_now(self.record.id, self.owner, change, now)
        except EffectRefused as exc:
            raise _Refused(change, exc.reason) from exc
        except EffectFailed as exc:
            self._report_held(StepOutcome.FAILED, printable(str(exc)))
            at = self._now()  # (as _halt: the store's commit never suspends here either)
            self._write(rules.halted(printable(str(exc)), at), at)
            raise _Halted from exc
        except BaseException as exc:  # not recorded (the lease lost, the store)
            self._report_held(StepOutcome.FAILED, describe_error(exc))
            raise
        self._after_write(change, now, began)

    def _before_write(self, change: Change) -> float:
        """The write's preamble (see _commit); the time the hooks measure it from, or 0.0."""
        if change.status is not None:
            check_saga_transition(self.record.status, change.status)
        # Outputs passed _storable_output, error texts printable(), names and the owner id
        # were checked when declared: no need for the store to encode everything again.
        change.checked = True
        take = self._take
        if take is not None:
            change.take = take
        return 0.0 if self._hooks_commit is None else perf_counter()

    def _after_write(self, change: Change, now: float, began: float) -> None:
        """What follows a durable write: the record, the listener, the hooks."""
        if self._take is not None:  # taken: later writes are fenced on the lease alone
            self._take = change.take = None
        if not self._shared:
            apply_change(self.record, change, now)
        if self.listener is not None:
            self.listener(self.record, change)
        if self._held is not None and change.effects:
            self._report_held(SUCCEEDED, None)
        sink = self._commit_sink  # the metrics' (see Hook.commit_sink), or None
        if sink is not None:
            sink.append(perf_counter() - began)
        elif self._hooks_commit is not None:
            self._hooks_commit.after_commit(self.record, change, perf_counter() - began)

    def _report_held(self, outcome: StepOutcome, error: str | None) -> None:
        """The hooks' ``after_step`` for the attempt held in ``_held`` (its ctx, its seconds),
        now that the write carrying its ``ctx.atomic()`` writes committed (SUCCEEDED), was
        refused (FAILED, or RETRYING for a compensation) or failed: one call an attempt."""
        held, self._held = self._held, None
        hooks = self._hooks_steps
        if held is None or hooks is None:
            return
        step, ctx, seconds = held
        if outcome is SUCCEEDED:
            ok = self._forward_ok if ctx.phase is FORWARD else hooks.undo_ok
            if ok is not None:
                ok[step].append(seconds)
                return
        hooks.after_step(self.record, ctx, outcome, error, seconds)

    def _now(self) -> float:
        # time.time() for the system clock: compiled, a call through the Clock protocol is a
        # generic method call (~500 instructions; 6 a saga), this a C call.
        return _time() if self._system_time else self.clock.now()

    def _event(
        self, type_: EventType, at: float, step: Step[Any] | None = None, **kw: Any
    ) -> Event:
        return Event(at=at, type=type_, step=step.name if step else None, **kw)

    def _input(self, step: Step[Any]) -> Any:
        # By adapter (compared by identity): steps taking the input as one type share it.
        adapter = step.input_adapter
        if adapter is self._input_adapter:
            return self._input_value
        if self._input_adapter is _UNDECODED:  # (no dict for the one type most sagas have)
            self._input_value = step.decode_input(self.record.input)
            self._input_adapter = adapter
            return self._input_value
        inputs = self._inputs
        if inputs is None:
            inputs = self._inputs = {}
        if adapter not in inputs:
            inputs[adapter] = step.decode_input(self.record.input)
        return inputs[adapter]

    def _context(self, step: Step[Any], phase: Phase, attempt: int) -> StepContext:
        saga_id = self.record.id
        forward_key = saga_id + step.key_suffix[FORWARD]  # == step.key(saga_id, FORWARD)
        key = forward_key if phase is FORWARD else saga_id + step.key_suffix[phase]
        # Positional (saga_id, saga_name, step, phase, attempt, idempotency_key, forward_key,
        # results): keyword construction of this slotted dataclass costs ~40% more, per step.
        return StepContext(
            saga_id, self.saga.name, step.name, phase, attempt, key, forward_key, self._results
        )

    async def _halt(self, error: str) -> None:
        """Stop FAILED for an operator: the step's outcome and its writes were not recorded,
        so its row stays RUNNING and a retry re-runs it with the same idempotency key."""
        now = self._now()
        await self._commit(rules.halted(error, now), now)

    def _check_effects(self) -> None:
        if not isinstance(self.store, TransactionalStore):
            raise StepFailed(
                f"ctx.atomic() needs a saga store that shares the step's database; "
                f"{type(self.store).__name__} does not"
            )

    def _attempt_timeout(self, step: Step[Any]) -> float | None:
        timeout, deadline = step.timeout, self.record.deadline_at
        if deadline is None or step.kind is RETRIABLE:
            return timeout
        left = max(deadline - self._now(), 0.001)
        return left if timeout is None else min(timeout, left)

    # -- driving ----------------------------------------------------------------------------
    #
    # ``now`` is threaded through: the clock is read once after each await (an action's end, a
    # backoff, a commit never needs one) and that time stamps every row and event of the
    # transition built before the next await, and the write itself.

    async def drive(self) -> None:
        """Run to a terminal status. Raises LeaseLost/StoreError if the log cannot be written."""
        try:  # (one coroutine: a wrapper around the body was a coroutine more per saga)
            now = self._now()
            carry = self._carry
            if carry is not None:
                # The forward and compensation loops judge steps by the record's rows.
                for row in carry.steps:
                    self.record.steps[(row.name, row.phase)] = row
                pending = carry
            elif self.record.waiting_for is not None:
                woken = await self._wake_parked(now)
                if woken is None:
                    return
                for row in woken.steps:  # a wait's outcome: the loops judge steps by these rows
                    self.record.steps[(row.name, row.phase)] = row
                pending = woken
            else:
                pending = Change()
            while True:  # (once, unless a step's atomic writes are refused)
                try:
                    if pending.status is None and self.record.status in (
                        SAGA_PENDING,
                        SAGA_RUNNING,
                    ):
                        if self.record.status is SAGA_PENDING:
                            pending.status = SAGA_RUNNING
                            pending.events.append(self._event(ON_SAGA_STARTED, now))
                        compensating, now = await self._forward(pending, now)
                        if compensating is None:
                            return  # succeeded, failed or parked: never compensating
                        pending = compensating
                    if (
                        self.record.status is SAGA_COMPENSATING
                        or pending.status is SAGA_COMPENSATING
                    ):
                        await self._compensate(pending, now)
                    return
                except _Refused as refused:  # decided anew from the record, left as it was
                    outcome = await self._refused(refused)
                    if outcome is None:
                        return
                    pending, now = outcome
        except _Halted:
            return

    async def _refused(self, refused: _Refused) -> tuple[Change, float] | None:
        """A step's ``ctx.atomic()`` writes refused (``StepFailed``) the write that carried its
        outcome: the step failed with that reason, as if its action (or compensation) had
        raised it. Nothing of the refused change was written nor applied to ``self.record``,
        so the step's row there is still the RUNNING (COMPENSATING) one its attempt wrote, and
        the failure is decided from it; whatever the change merged after the outcome (the next
        step's start, the saga's end) is dropped with it. Returns the change that goes on (the
        saga compensating, or a compensation's retry), or None once the saga is FAILED."""
        # The outcome a step's writes ride is the first row of the change that carries them:
        # ``step_succeeded`` / ``compensation_succeeded`` make it, later rows are merged after.
        done = refused.change.steps[0]
        step = self.saga.get_step(done.name)
        running = self.record.steps[(done.name, done.phase)]
        error = printable(refused.reason)
        now = self._now()
        if done.phase is FORWARD:
            decision = rules.step_failed(
                step, self.record, running, error, retryable=False, uncertain=False, now=now
            )
            self._report_held(StepOutcome.FAILED, error)
        else:
            limit = rules.compensation_limit(step.compensation_retry, None)
            decision = rules.compensation_failed(step, running, error, limit, now)
            again = decision.next is RETRY
            self._report_held(StepOutcome.RETRYING if again else StepOutcome.FAILED, error)
            if again:  # _compensate runs it again from its COMPENSATING row
                await self._backoff(decision.delay, forward_only=True)
                return decision.change, self._now()
        if decision.next is STOP:
            await self._commit(decision.change, now)
            return None
        return decision.change, now

    async def _forward(self, pending: Change, now: float) -> tuple[Change | None, float]:
        """Run the remaining steps; return a Change that starts compensation (and its time),
        or None once the saga is SUCCEEDED, FAILED or parked."""
        for step in self.saga.steps:
            row = self.record.steps.get((step.name, FORWARD))
            if row is not None and row.status is STEP_SUCCEEDED:
                continue
            # A retriable step is never stopped, unless nothing has started yet.
            checked = step.kind is not RETRIABLE or not (self.record.steps or pending.steps)
            stop = stop_reason(self.record, now) if checked else None
            if stop is not None:
                return rules.merge(pending, rules.stopped_before(step, row, stop, now)), now
            attempt = 0 if row is None else row.attempts
            skip_write = False
            if row is not None and row.status is STEP_RUNNING:
                if self._prewritten:
                    skip_write = True
                elif self._resend:
                    self._resend = False  # the timeout's STEP_RETRYING says why
                elif rules.give_up_uncertain(step, row):
                    given_up = rules.uncertain_given_up(step, row, now, self.cancel_requested)
                    return rules.merge(pending, given_up), now
                else:
                    pending.events.append(
                        self._event(EventType.STEP_RESUMED, now, step, attempt=attempt)
                    )
            self._prewritten = False
            # The write that starts the step also checks for a cancel (see _cancel_won).
            pending.unless_cancelled = checked and row is None
            outcome = await self._run_step(step, row, attempt, pending, now, skip_write)
            if outcome is None:  # the saga ended (FAILED past the pivot) or parked
                return None, now
            pending, now = outcome
            if pending.status is SAGA_COMPENSATING:
                return pending, now
        if self._commit_now is not None:
            self._write(rules.saga_succeeded(pending, now), now)
        else:
            await self._commit(rules.saga_succeeded(pending, now), now)
        return None, now

    async def _run_step(
        self,
        step: Step[Any],
        row: StepRecord | None,
        attempt: int,
        pending: Change,
        now: float,
        skip_write: bool,
    ) -> tuple[Change, float] | None:
        forward_only = step.kind is RETRIABLE
        started_at = row.started_at if row is not None else None
        # A remote step on a message transport, or a wait: the RUNNING row parks the saga.
        parking = (step.remote is not None and self.parks) or step.wait is not None
        failure: Exception | None = None
        while True:
            if skip_write:
                assert row is not None
                running, skip_write = row, False
                if parking:  # step 0, written RUNNING with the saga: its command goes now
                    ctx = self._context(step, FORWARD, running.attempts)
                    failure = await self._park_on(pending, step, ctx, None, now)
                    if failure is None:
                        await self._commit(pending, now)
                        await self._parked(pending)
                        return None
            else:
                attempt += 1
                # Rows and events are built positionally on this path (field order: see
                # state.py): keyword construction of these slotted dataclasses costs ~40% more.
                running = StepRecord(
                    step.name,  # name
                    FORWARD,  # phase
                    STEP_RUNNING,  # status
                    attempt,  # attempts
                    None,  # output
                    row.error if row is not None else None,  # error
                    # An earlier attempt that may have taken effect keeps the step uncertain.
                    row is not None and row.uncertain,  # uncertain
                    started_at or now,  # started_at
                )
                pending.steps.append(running)
                # The engine that runs the attempt (detail), so the timeline shows who did what.
                pending.events.append(
                    Event(now, ON_STEP_STARTED, step.name, None, attempt, self.owner)
                )
                if parking:  # the command goes out with the RUNNING row, then the saga parks
                    ctx = self._context(step, FORWARD, attempt)
                    failure = await self._park_on(pending, step, ctx, None, now)
                try:  # (inline, not a coroutine of its own: this is every step's write)
                    if self._commit_now is not None:
                        self._write(pending, now)  # (_commit as a plain call: see _write)
                    else:
                        await self._commit(pending, now)
                except CancelPending:  # only with unless_cancelled: see _cancel_won
                    return rules.start_compensation(
                        self._cancel_won(pending, now), "cancelled", True
                    ), now
                pending.unless_cancelled = False
                if parking and failure is None:
                    await self._parked(pending)
                    return None
            started_at = running.started_at
            # _context(step, FORWARD, attempt), inline: a call less on every attempt.
            key = self.record.id + step.key_suffix[FORWARD]
            ctx = StepContext(
                self.record.id, self.saga.name, step.name, FORWARD, attempt, key, key, self._results
            )
            hooks = self._hooks_steps
            if hooks is not None:
                if self._hooks_before:
                    hooks.before_step(self.record, ctx)
                ok = self._forward_ok  # the metrics' sink (see Hook.step_sink), or None
                began = perf_counter()
            try:
                if step.remote is None and step.wait is None:
                    # Without a saga deadline the step's own timeout applies as declared.
                    timeout = (
                        step.timeout
                        if self.record.deadline_at is None
                        else self._attempt_timeout(step)
                    )
                    arg = (  # _input(step), a call less once it is decoded
                        self._input_value
                        if step.input_adapter is self._input_adapter
                        else self._input(step)
                    )
                    if timeout is None:
                        value = await step.action(ctx, arg)
                    else:
                        # call_with_timeout, its first part inline (see resume_with_timeout):
                        # most actions on a local store return without suspending.
                        began_call = _monotonic()
                        steps: Any = _returning(self, step.action(ctx, arg))
                        # Compiled, that coroutine is its own iterator (its __await__, a generic
                        # call, returns it); an interpreted one is not.
                        if type(steps) is _COROUTINE:
                            steps = steps.__await__()
                        suspended_on = _next(steps, _RETURNED)  # up to its first suspension
                        if suspended_on is not _RETURNED:
                            await resume_with_timeout(steps, suspended_on, began_call, timeout)
                        value, self._returned = self._returned, None
                else:
                    value = await self._remote_call(step, ctx, None, failure)
                    failure = None
                output = storable_output(step, value)
                if ctx.effects is not None:
                    self._check_effects()
            except UnstorableValue as exc:
                # The action returned, so its effect happened: running it again would repeat
                # it. Fail the step for good, and mark it uncertain so it is compensated.
                error, uncertain, retryable = str(exc), True, False
            except StepFailed as exc:
                error, uncertain, retryable = printable(exc.reason), False, False
            except DecodeError as exc:  # a programming error: retrying cannot help
                error, uncertain, retryable = printable(str(exc)), False, False
            except (TimeoutError, TransportError) as exc:
                # A transport error may come after the command reached the participant.
                error, uncertain, retryable = describe_error(exc), True, True
            except asyncio.CancelledError:
                if hooks is not None:
                    hooks.after_step(
                        self.record, ctx, StepOutcome.FAILED, "cancelled", perf_counter() - began
                    )
                raise
            except Exception as exc:  # transient by definition: the retry policy decides
                error, uncertain, retryable = describe_error(exc), False, True
            else:
                now = self._now()
                effects = () if ctx.effects is None else tuple(ctx.effects)
                if hooks is not None:
                    if effects:
                        self._held = (step, ctx, perf_counter() - began)
                    elif ok is not None:
                        ok[step].append(perf_counter() - began)
                    else:
                        hooks.after_step(self.record, ctx, SUCCEEDED, None, perf_counter() - began)
                # ``pending`` is written (or, for step 0 written with the saga, empty).
                renews = self.hands_over_record and pending is not self._carry
                written = pending if renews else None  # (see Change.renew)
                return step_succeeded(running, output, now, effects, written), now
            now = self._now()
            decision = rules.step_failed(
                step, self.record, running, error, retryable=retryable, uncertain=uncertain, now=now
            )
            if hooks is not None:
                again = decision.next is Next.RETRY
                outcome = StepOutcome.RETRYING if again else StepOutcome.FAILED
                hooks.after_step(self.record, ctx, outcome, error, perf_counter() - began)
            if decision.next is RETRY:
                await self._backoff(decision.delay, forward_only)
                now = self._now()
                after = rules.backoff_over(step, self.record, running, error, uncertain, now)
                if after.next is RETRY:
                    pending = decision.change
                    row = rules.finished(
                        running, StepStatus.RUNNING, error, now, uncertain or running.uncertain
                    )
                    continue
                decision = after  # cancelled, or the deadline passed, while backing off
            if decision.next is STOP:
                await self._commit(decision.change, now)
                return None
            return decision.change, now

    def _cancel_won(self, pending: Change, now: float) -> Change:
        """``pending`` (ending with a step's RUNNING row and STEP_STARTED event, written with
        ``unless_cancelled``) was refused: a cancel is recorded. The cancel won the race: the
        step never started, and ``pending`` becomes its outcome-so-far plus the cancel, ready
        to start compensating. A store decides a cancel under the same lock as this write, so
        a cancel it accepted is always seen here, even when it reached another engine."""
        del pending.steps[-1], pending.events[-1]
        pending.unless_cancelled = False
        pending.outbox, pending.park = (), None  # the command was never sent
        self.cancel_requested = True
        pending.events.append(self._event(EventType.CANCEL_REQUESTED, now))
        return pending

    async def _backoff(self, delay: float, forward_only: bool) -> None:
        deadline = self.record.deadline_at
        if deadline is not None and not forward_only:
            delay = min(delay, max(deadline - self._now(), 0.0))
        if delay > 0:
            await self.clock.sleep(delay)

    async def _compensate(self, pending: Change, now: float) -> None:
        error = pending.error if pending.status is not None else self.record.error
        # Bug fix: the outcome that started compensation (the failed step's FAILED row) is still
        # in ``pending``, not yet in ``self.record``, where that step looks RUNNING (uncertain):
        # judge each step by its latest row, or a step that failed for sure gets compensated.
        latest = {s.name: s for s in pending.steps if s.phase is FORWARD}
        # A reversed copy, not reversed(): mypyc (the compiled build) fails on that loop.
        for step in self.saga.steps[::-1]:
            forward = latest.get(step.name) or self.record.steps.get((step.name, FORWARD))
            if not step.has_undo or not rules.needs_undo(forward):
                continue
            row = self.record.steps.get((step.name, COMPENSATION))
            if row is not None and row.status is STEP_COMPENSATED:
                continue
            outcome = await self._undo(step, row, pending, now)
            if outcome is None:
                return
            pending, now = outcome
        if self._commit_now is not None:
            self._write(rules.saga_compensated(pending, error, now), now)
        else:
            await self._commit(rules.saga_compensated(pending, error, now), now)

    async def _undo(
        self, step: Step[Any], row: StepRecord | None, pending: Change, now: float
    ) -> tuple[Change, float] | None:
        attempt = 0 if row is None else row.attempts
        limit = rules.compensation_limit(step.compensation_retry, row)
        started_at = row.started_at if row is not None else None
        forward = self.record.steps[(step.name, FORWARD)]
        assert step.has_undo
        parking = step.remote is not None and self.parks
        failure: Exception | None = None
        while True:
            attempt += 1
            # Positional, as in _run_step: name, phase, status, attempts, output, error,
            # uncertain, started_at; the event's at, type, step, phase, attempt, detail.
            running = StepRecord(
                step.name,
                COMPENSATION,
                STEP_COMPENSATING,
                attempt,
                None,
                None,
                False,
                started_at or now,
            )
            started_at = running.started_at
            pending.steps.append(running)
            pending.events.append(
                Event(
                    now,
                    ON_COMPENSATION_STARTED,
                    step.name,
                    COMPENSATION,
                    attempt,
                    self.owner,
                )
            )
            ctx = self._context(step, COMPENSATION, attempt)
            if parking:
                failure = await self._park_on(pending, step, ctx, forward, now)
            if self._commit_now is not None:
                self._write(pending, now)
            else:
                await self._commit(pending, now)
            if parking and failure is None:
                await self._parked(pending)
                return None
            hooks = self._hooks_steps
            if hooks is not None:
                if self._hooks_before:
                    hooks.before_step(self.record, ctx)
                ok = hooks.undo_ok
                began = perf_counter()
            try:
                output = (
                    step.decode_output(forward.output) if forward.status is STEP_SUCCEEDED else None
                )
                if step.undo is not None:
                    await call_with_timeout(
                        step.undo, (ctx, self._input(step), output), step.compensation_timeout
                    )
                else:
                    await self._remote_call(step, ctx, output, failure)
                    failure = None
                if ctx.effects is not None:
                    self._check_effects()
            except asyncio.CancelledError:
                if hooks is not None:
                    hooks.after_step(
                        self.record, ctx, StepOutcome.FAILED, "cancelled", perf_counter() - began
                    )
                raise
            except DecodeError as exc:  # a programming error: retrying cannot help
                error, limit = str(exc), attempt
            except Exception as exc:
                error = describe_error(exc)
            else:
                now = self._now()
                effects = () if ctx.effects is None else tuple(ctx.effects)
                if hooks is not None:
                    if effects:
                        self._held = (step, ctx, perf_counter() - began)
                    elif ok is not None:
                        ok[step].append(perf_counter() - began)
                    else:
                        hooks.after_step(self.record, ctx, SUCCEEDED, None, perf_counter() - began)
                return rules.compensation_succeeded(running, now, effects), now
            now = self._now()
            decision = rules.compensation_failed(step, running, error, limit, now)
            if hooks is not None:
                again = decision.next is Next.RETRY
                outcome = StepOutcome.RETRYING if again else StepOutcome.FAILED
                hooks.after_step(self.record, ctx, outcome, error, perf_counter() - began)
            if decision.next is RETRY:
                pending = decision.change
                await self._backoff(decision.delay, forward_only=True)
                now = self._now()
                continue
            await self._commit(decision.change, now)
            return None
