"""The transition rules: from a saga record and what just happened, the Change to write and what
to do next. Pure: no I/O, no clock (``now`` is passed in), no randomness but a retry's jitter.

The runner (steps run in this process or called over a request/response transport), the
engine (an operator's retry, a reply that reaches a parked saga, a park whose time ran out)
all decide here, so a step's fate is the same whichever way its outcome arrived.

``decide(saga, record, happened, now)`` is the one entry point for every kind of event; the
runner's hot path calls the rule functions it dispatches to directly (``step_succeeded``,
``step_failed``...), which saves building a ``happened`` object per step.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Final

from sagaway.decisions import (
    BackoffOver,
    Decision,
    Failed,
    Happened,
    ReplyArrived,
    Signal,
    SignalArrived,
    Succeeded,
    Timeout,
)
from sagaway.decisions import Next as Next  # re-exported: defined here before
from sagaway.definition import OnUncertain, RetryPolicy, StepKind
from sagaway.state import (
    JSON,
    Change,
    Effect,
    Event,
    EventType,
    Park,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.statuses import (
    COMPENSATION,
    FORWARD,
    ON_SAGA_COMPENSATED,
    ON_SAGA_SUCCEEDED,
    ON_STEP_COMPENSATED,
    ON_STEP_FAILED,
    ON_STEP_SUCCEEDED,
    SAGA_COMPENSATED,
    SAGA_COMPENSATING,
    SAGA_SUCCEEDED,
    STEP_COMPENSATED,
    STEP_FAILED,
    STEP_RUNNING,
    STEP_SUCCEEDED,
)
from sagaway.store._codec import check_value

if TYPE_CHECKING:
    from sagaway.definition import Saga, Step
    from sagaway.transport.base import Reply

# Members the runner's path names (why constants: see sagaway.statuses).
RETRIABLE: Final = StepKind.RETRIABLE
RETRY: Final = Next.RETRY
STOP: Final = Next.STOP
COMPENSATE: Final = Next.COMPENSATE
TIMED_OUT = "timed out"
NO_REPLY = "timed out waiting for a reply"


# -- reading a record ------------------------------------------------------------------------


def past_pivot(saga: Saga, record: SagaRecord) -> bool:
    """True once the saga can only go forward: cancelling or a deadline no longer applies."""
    for step in saga.steps:
        row = record.steps.get((step.name, FORWARD))
        if row is None:
            continue
        if step.kind is StepKind.RETRIABLE:
            return True
        if step.kind is StepKind.PIVOT and row.status is StepStatus.SUCCEEDED:
            return True
    return False


def last_cancellable(saga: Saga) -> str | None:
    """The last step a cancel can stop the saga before: its pivot, or its last compensatable
    step (retriable steps come last and run to the end). None when every step is retriable."""
    stoppable = [s.name for s in saga.steps if s.kind is not StepKind.RETRIABLE]
    return stoppable[-1] if stoppable else None


def compensation_reason(record: SagaRecord) -> str | None:
    """Why the saga began compensating, read back from its history."""
    reason = None
    for event in record.history:
        if event.type is EventType.COMPENSATION_STARTED:
            return reason
        if event.type is EventType.STEP_FAILED:
            reason = event.detail
        elif event.type is EventType.CANCEL_REQUESTED:
            reason = "cancelled"
        elif event.type is EventType.DEADLINE_EXPIRED:
            reason = "deadline expired"
    return reason


def needs_undo(row: StepRecord | None) -> bool:
    """Succeeded, or may have taken effect: RUNNING at a crash, or ended by a timeout."""
    if row is None:
        return False
    return row.status in (STEP_SUCCEEDED, STEP_RUNNING) or (
        row.status is STEP_FAILED and row.uncertain
    )


def stop_reason(record: SagaRecord, now: float) -> tuple[EventType, str] | None:
    """Why the saga must stop going forward and compensate, checked between steps."""
    if record.cancel_requested:
        return EventType.CANCEL_REQUESTED, "cancelled"
    deadline = record.deadline_at
    if deadline is not None and now >= deadline:
        return EventType.DEADLINE_EXPIRED, "deadline expired"
    return None


def compensation_limit(policy: RetryPolicy, row: StepRecord | None) -> int:
    """The last attempt a compensation may make: a fresh budget after an operator's retry of a
    FAILED compensation; otherwise the attempts already made count, but a crash never denies
    it one more try."""
    attempt = 0 if row is None else row.attempts
    if row is not None and row.status is STEP_FAILED:
        return attempt + policy.max_attempts
    return max(policy.max_attempts, attempt + 1)


def waiting_step(record: SagaRecord) -> StepRecord | None:
    """The row a parked saga waits on: its step in flight (RUNNING or COMPENSATING)."""
    phase = COMPENSATION if record.status is SagaStatus.COMPENSATING else FORWARD
    status = StepStatus.COMPENSATING if phase is COMPENSATION else StepStatus.RUNNING
    for (_, row_phase), row in record.steps.items():
        if row_phase is phase and row.status is status:
            return row
    return None


# -- building rows and changes ---------------------------------------------------------------


def finished(
    row: StepRecord, status: StepStatus, error: str | None, now: float, uncertain: bool = False
) -> StepRecord:
    return StepRecord(
        row.name, row.phase, status, row.attempts, row.output, error, uncertain, row.started_at, now
    )


def start_compensation(change: Change, error: str, cancel_requested: bool) -> Change:
    change.status, change.error = SAGA_COMPENSATING, error
    change.clear_cancel = cancel_requested
    return change


def saga_failed(change: Change, error: str, now: float) -> Change:
    """``change`` made the saga FAILED for an operator (the lease goes back)."""
    change.status, change.error = SagaStatus.FAILED, error
    change.events.append(Event(now, EventType.SAGA_FAILED, None, None, None, error))
    change.release_lease = True
    return change


def halted(error: str, now: float) -> Change:
    """FAILED for an operator without recording the step's outcome (its writes failed), so
    its row stays RUNNING and a retry re-runs it with the same idempotency key."""
    return saga_failed(Change(), error, now)


def saga_succeeded(change: Change, now: float) -> Change:
    change.status = SAGA_SUCCEEDED
    change.events.append(Event(now, ON_SAGA_SUCCEEDED))
    change.release_lease = True
    return change


def saga_compensated(change: Change, error: str | None, now: float) -> Change:
    change.status, change.error = SAGA_COMPENSATED, error
    change.events.append(Event(now, ON_SAGA_COMPENSATED, None, None, None, error))
    change.release_lease = True
    return change


# -- the rules -------------------------------------------------------------------------------


def stopped_before(
    step: Step[Any], row: StepRecord | None, reason: tuple[EventType, str], now: float
) -> Change:
    """A cancel or the deadline stops the saga before ``step`` (re)starts: compensate. A row
    left RUNNING (step 0 written with the saga, or found so after a crash) is closed FAILED,
    uncertain: it may have run, so it is still compensated."""
    event_type, error = reason
    change = Change(events=[Event(now, event_type)])
    if row is not None and row.status is StepStatus.RUNNING:
        change.steps.append(finished(row, StepStatus.FAILED, error, now, uncertain=True))
    return start_compensation(change, error, event_type is EventType.CANCEL_REQUESTED)


def give_up_uncertain(step: Step[Any], row: StepRecord) -> bool:
    """A row found RUNNING after a crash: True to compensate it rather than ask again.

    Only a step with a compensation can be given up on. A pivot has none: compensating the
    steps before it while it may have taken effect would strand that effect, so an uncertain
    pivot is always asked again with the same key (its participant answers what happened)."""
    return step.on_uncertain is OnUncertain.COMPENSATE and step.kind is StepKind.COMPENSATABLE


def uncertain_given_up(step: Step[Any], row: StepRecord, now: float, cancelled: bool) -> Change:
    change = Change(
        steps=[finished(row, StepStatus.FAILED, "outcome uncertain", now, uncertain=True)],
        events=[Event(now, EventType.STEP_FAILED, step.name, None, None, "outcome uncertain")],
    )
    return start_compensation(change, f"{step.name}: outcome uncertain", cancelled)


def step_succeeded(
    running: StepRecord,
    output: JSON,
    now: float,
    effects: tuple[Effect, ...] = (),
    written: Change | None = None,
) -> Change:
    """The step's action returned: its row SUCCEEDED (merged into the next write). In
    ``written`` (see ``Change.renew``), if given, rather than a new Change."""
    # Positional (field order: see state.py): on every step's hot path.
    done = StepRecord(
        running.name,  # name
        FORWARD,  # phase
        STEP_SUCCEEDED,  # status
        running.attempts,  # attempts
        output,  # output
        None,  # error
        False,  # uncertain
        running.started_at,  # started_at
        now,  # finished_at
    )
    event = Event(now, ON_STEP_SUCCEEDED, running.name, None, running.attempts)
    if written is not None:
        return written.renew(done, event, effects)
    # status, error, steps, events, release_lease, clear_cancel, unless_cancelled, checked,
    # effects: positional, as above.
    return Change(None, None, [done], [event], False, False, False, False, effects)


def step_failed(
    step: Step[Any],
    record: SagaRecord,
    running: StepRecord,
    error: str,
    *,
    retryable: bool,
    uncertain: bool,
    now: float,
) -> Decision:
    """The step's action failed: retry it after a backoff (transient, attempts left, nothing
    stopping the saga), or fail it and compensate; or, past the pivot (a retriable step's
    business failure) or for a pivot whose outcome stayed uncertain, stop FAILED: no
    compensation can make it consistent, so only an operator can help (their retry asks the
    step again under the same key)."""
    attempt = running.attempts
    forward_only = step.kind is RETRIABLE
    if retryable:
        # Every attempt carried the same key, so a refusal (not retryable) is the answer for
        # all of them; an unknown outcome now leaves standing any earlier attempt's doubt.
        uncertain = uncertain or running.uncertain
    if (
        retryable
        and (forward_only or attempt < step.retry.max_attempts)
        and (forward_only or stop_reason(record, now) is None)
    ):
        retrying = Event(now, EventType.STEP_RETRYING, step.name, None, attempt, error)
        delay = step.retry.delay(attempt)
        return Decision(Change(events=[retrying]), RETRY, step.name, FORWARD, delay)
    return _fail(step, record, running, error, uncertain, now, None)


def _fail(
    step: Step[Any],
    record: SagaRecord,
    running: StepRecord,
    error: str,
    uncertain: bool,
    now: float,
    stopped_by: tuple[EventType, str] | None,
) -> Decision:
    change = Change(
        steps=[finished(running, STEP_FAILED, error, now, uncertain)],
        events=[Event(now, ON_STEP_FAILED, step.name, None, running.attempts, error)],
    )
    cancelled = record.cancel_requested
    if stopped_by is not None:
        change.events.append(Event(now, stopped_by[0]))
        start_compensation(change, stopped_by[1], cancelled)
        return Decision(change, COMPENSATE, step.name)
    if step.kind is RETRIABLE or (uncertain and step.kind is StepKind.PIVOT):
        return Decision(saga_failed(change, f"{step.name}: {error}", now), STOP, step.name)
    return Decision(start_compensation(change, error, cancelled), COMPENSATE, step.name)


def backoff_over(
    step: Step[Any],
    record: SagaRecord,
    running: StepRecord,
    error: str,
    uncertain: bool,
    now: float,
) -> Decision:
    """The backoff before a retry ended: retry, unless a cancel or the deadline came first
    (a retriable step is never stopped): then the step fails and the saga compensates."""
    stop = None if step.kind is StepKind.RETRIABLE else stop_reason(record, now)
    if stop is None:
        return Decision(Change(), Next.RETRY, step.name)
    return _fail(step, record, running, error, uncertain or running.uncertain, now, stop)


def compensation_succeeded(
    running: StepRecord, now: float, effects: tuple[Effect, ...] = ()
) -> Change:
    return Change(
        steps=[finished(running, STEP_COMPENSATED, None, now)],
        events=[Event(now, ON_STEP_COMPENSATED, running.name, COMPENSATION, running.attempts)],
        effects=effects,
    )


def compensation_failed(
    step: Step[Any], running: StepRecord, error: str, limit: int, now: float
) -> Decision:
    """A compensation failed: compensations are retried (any error) until ``limit``, then the
    saga stops FAILED for an operator."""
    attempt = running.attempts
    if attempt < limit:
        retrying = Event(
            now, EventType.COMPENSATION_RETRYING, step.name, COMPENSATION, attempt, error
        )
        return Decision(
            Change(events=[retrying]),
            Next.RETRY,
            step.name,
            COMPENSATION,
            step.compensation_retry.delay(attempt),
        )
    message = f"compensation of {step.name} failed: {error}"
    change = Change(
        steps=[finished(running, StepStatus.FAILED, error, now)],
        events=[Event(now, EventType.COMPENSATION_FAILED, step.name, COMPENSATION, attempt, error)],
    )
    return Decision(saga_failed(change, message, now), Next.STOP, step.name, COMPENSATION)


def retry_requested(record: SagaRecord, release_lease: bool) -> Change:
    """An operator's retry of a FAILED saga: back to compensating if it failed compensating
    (its error goes back to why it compensated: FAILED replaced it), else forward (a step
    past the pivot failed)."""
    compensating = any(phase is COMPENSATION for _, phase in record.steps)
    target = SagaStatus.COMPENSATING if compensating else SagaStatus.RUNNING
    error = compensation_reason(record) if compensating else None
    return Change(status=target, error=error or record.error, release_lease=release_lease)


def reply_is_current(record: SagaRecord, reply: Reply) -> bool:
    """Whether the saga still waits for this reply: its step and phase are in flight. A reply
    to an earlier attempt of the same command counts (same key: the same answer)."""
    if not record.status.is_active:
        return False
    row = record.steps.get((reply.step, reply.phase))
    if row is None:
        return False
    in_flight = StepStatus.RUNNING if reply.phase is FORWARD else StepStatus.COMPENSATING
    return row.status is in_flight


def reply_arrived(
    saga: Saga, record: SagaRecord, reply: Reply, now: float, limit: int | None = None
) -> Decision:
    """A participant's reply to a parked saga: the same rules as a local outcome, with the
    park cleared in the same write. A reply the saga no longer waits for is ignored."""
    if not reply_is_current(record, reply):
        return Decision(Change(), Next.IGNORE, reply.step, reply.phase)
    step = saga.get_step(reply.step)
    running = record.steps[(reply.step, reply.phase)]
    if reply.phase is FORWARD:
        if reply.ok:
            change = step_succeeded(running, reply.output, now)
            decision = Decision(change, Next.CONTINUE, step.name)
        else:
            error = reply.error or "refused"
            decision = step_failed(
                step, record, running, error, retryable=False, uncertain=False, now=now
            )
    elif reply.ok:
        decision = Decision(compensation_succeeded(running, now), Next.CONTINUE, step.name)
        decision.phase = COMPENSATION
    else:
        budget = limit if limit is not None else parked_compensation_limit(step, running)
        decision = compensation_failed(step, running, reply.error or "refused", budget, now)
    decision.change.unpark = True
    return decision


def parked_compensation_limit(step: Step[Any], running: StepRecord) -> int:
    """The retry budget of a compensation in flight when the runner's own count is gone (it
    parked): up to the end of the current round of ``max_attempts``."""
    per_round = step.compensation_retry.max_attempts
    return max(per_round, -(-running.attempts // per_round) * per_round)


# -- waits: signals and timers -----------------------------------------------------------------


def recorded_signal(record: SagaRecord) -> Signal | None:
    """A signal delivered to a parked wait but not applied yet (by an engine that does not
    drive the saga): it sits in the waiting step's row until an engine that does applies it."""
    if record.waiting_for is None or not record.waiting_for.startswith("signal:"):
        return None
    row = waiting_step(record)
    output = None if row is None else row.output
    if not isinstance(output, dict) or "signal_id" not in output:
        return None
    return Signal(
        str(output.get("signal")),
        str(output["signal_id"]),
        output.get("payload"),
        output.get("error"),
    )


def signal_recorded(record: SagaRecord, signal: Signal, now: float) -> Change:
    """Record ``signal`` for the saga (parked on its wait), for whichever engine drives it to
    apply: in the waiting row, with its SIGNAL_RECEIVED event, the park made due now."""
    row = waiting_step(record)
    assert row is not None
    assert record.waiting_for is not None
    event = Event(now, EventType.SIGNAL_RECEIVED, row.name, None, row.attempts, signal.detail)
    return Change(
        steps=[dataclasses.replace(row, output=signal.envelope())],
        events=[event],
        park=Park(record.waiting_for, now),
    )


def signal_arrived(
    saga: Saga, record: SagaRecord, signal: Signal, now: float, *, recorded: bool = False
) -> Decision:
    """A signal for the parked wait: its payload (decoded as the step's ``reply``) is the
    step's output; ``error``, or a payload that does not fit, fails the step like a refused
    command (compensate; past the pivot, FAILED). The park is cleared in the same write,
    with the SIGNAL_RECEIVED event (unless ``recorded`` already) that dedupes the signal."""
    row = waiting_step(record)
    assert row is not None
    step = saga.get_step(row.name)
    error = None if signal.error is None else f"signal {signal.name}: {signal.error}"
    if error is None:
        try:
            output = step.encode_output(step.decode_output(signal.payload))
            check_value(output, f"the payload of signal {signal.name!r}")
        except Exception as exc:
            error = f"signal {signal.name}: {exc}"
    if error is None:
        decision = Decision(step_succeeded(row, output, now), Next.CONTINUE, step.name)
    else:
        decision = step_failed(step, record, row, error, retryable=False, uncertain=False, now=now)
    if not recorded:
        event = Event(now, EventType.SIGNAL_RECEIVED, row.name, None, row.attempts, signal.detail)
        decision.change.events.insert(0, event)
    decision.change.unpark = True
    return decision


def wait_due(
    saga: Saga, record: SagaRecord, step: Step[Any], row: StepRecord, now: float
) -> Decision:
    """A wait's time came: a sleep is over (output None), a wait for a signal timed out: its
    ``default`` output, or it fails (compensate; past the pivot, FAILED). A wait cut short by
    the saga's deadline compensates for the deadline."""
    wait = step.wait
    assert wait is not None
    deadline = record.deadline_at
    stop = None
    if deadline is not None and now >= deadline and step.kind is not StepKind.RETRIABLE:
        stop = (EventType.DEADLINE_EXPIRED, "deadline expired")
    if stop is None and (wait.signal is None or wait.has_default):
        output = None if wait.signal is None else step.encode_output(wait.default)
        decision = Decision(step_succeeded(row, output, now), Next.CONTINUE, step.name)
    else:
        error = (
            TIMED_OUT if wait.signal is None else f"timed out waiting for signal {wait.signal!r}"
        )
        decision = _fail(step, record, row, error, False, now, stop)
    decision.change.unpark = True
    return decision


def timed_out(saga: Saga, record: SagaRecord, now: float) -> Decision:
    """A parked saga's time ran out with no reply. Forward: the command may have taken effect
    (uncertain); send it again with the same key while attempts are left (no backoff: the
    wait was one), then fail it as uncertain (compensated; a pivot stops FAILED).
    Compensation: the same, within the compensation's budget."""
    row = waiting_step(record)
    if row is None:  # nothing in flight: just drive it on
        return Decision(Change(unpark=True), Next.CONTINUE)
    step = saga.get_step(row.name)
    if step.wait is not None and row.phase is FORWARD:
        return wait_due(saga, record, step, row, now)
    if row.phase is FORWARD:
        decision = step_failed(step, record, row, NO_REPLY, retryable=True, uncertain=True, now=now)
    else:
        decision = compensation_failed(
            step, row, NO_REPLY, parked_compensation_limit(step, row), now
        )
    if decision.next is Next.RETRY:
        decision.next, decision.delay = Next.RESEND, 0.0
    decision.change.unpark = True
    return decision


def decide(saga: Saga, record: SagaRecord, happened: Happened, now: float) -> Decision:
    """The one entry point: the Change to write, and what to do next, after ``happened``."""
    if isinstance(happened, Succeeded):
        running = record.steps[(happened.step, happened.phase)]
        if happened.phase is FORWARD:
            change = step_succeeded(running, happened.output, now, happened.effects)
            return Decision(change, Next.CONTINUE, happened.step)
        change = compensation_succeeded(running, now, happened.effects)
        return Decision(change, Next.CONTINUE, happened.step, COMPENSATION)
    if isinstance(happened, Failed):
        step = saga.get_step(happened.step)
        running = record.steps[(happened.step, happened.phase)]
        if happened.phase is FORWARD:
            return step_failed(
                step,
                record,
                running,
                happened.error,
                retryable=happened.retryable,
                uncertain=happened.uncertain,
                now=now,
            )
        limit = happened.limit
        if limit is None:
            limit = parked_compensation_limit(step, running)
        if not happened.retryable:
            limit = running.attempts
        return compensation_failed(step, running, happened.error, limit, now)
    if isinstance(happened, ReplyArrived):
        return reply_arrived(saga, record, happened.reply, now)
    if isinstance(happened, SignalArrived):
        return signal_arrived(saga, record, happened.signal, now, recorded=happened.recorded)
    if isinstance(happened, Timeout):
        return timed_out(saga, record, now)
    if isinstance(happened, BackoffOver):
        step = saga.get_step(happened.step)
        running = record.steps[(step.name, FORWARD)]
        return backoff_over(step, record, running, happened.error, happened.uncertain, now)
    return Decision(retry_requested(record, happened.release_lease), Next.CONTINUE)


def merge(into: Change, change: Change) -> Change:
    """Fold ``change`` into ``into`` (written together, in one atomic write)."""
    into.steps.extend(change.steps)
    into.events.extend(change.events)
    if change.status is not None:
        into.status, into.error = change.status, change.error
    into.release_lease = into.release_lease or change.release_lease
    into.clear_cancel = into.clear_cancel or change.clear_cancel
    into.unpark = into.unpark or change.unpark
    if change.effects:
        into.effects += change.effects
    if change.outbox:
        into.outbox += change.outbox
    if change.park is not None:
        into.park = change.park
    return into
