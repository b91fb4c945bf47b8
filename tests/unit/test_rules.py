"""The transition rules (sagaway.rules) as a table: one row per rule, each a saga record, what
happened, and the decision expected (what to do next, the saga status and the step row the
Change writes, and the events it records)."""

from dataclasses import dataclass, field, fields
from typing import Any

import pytest

from sagaway import RetryPolicy, Saga, StepContext
from sagaway.decisions import (
    BackoffOver,
    Failed,
    Happened,
    Next,
    ReplyArrived,
    RetryRequested,
    Succeeded,
    Timeout,
)
from sagaway.rules import (
    NO_REPLY,
    compensation_limit,
    decide,
    last_cancellable,
    needs_undo,
    past_pivot,
    step_succeeded,
    stop_reason,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    OutboxMessage,
    Park,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
    Take,
)
from sagaway.transport.base import Reply

NOW = 1_000.0
F, C = Phase.FORWARD, Phase.COMPENSATION
S = StepStatus
RETRY3 = RetryPolicy(max_attempts=3, initial_delay=0.5, jitter=0)
COMP2 = RetryPolicy(max_attempts=2, initial_delay=0.25, jitter=0)


def _saga() -> Saga:
    saga = Saga("rules-table", version=1)

    async def act(ctx: StepContext, order: Any) -> Any:
        return None

    async def undo(ctx: StepContext, order: Any, out: Any) -> None:
        return None

    for name, kind in (("a", "compensatable"), ("pay", "pivot"), ("ship", "retriable")):
        step = saga.step(
            act, name=name, kind=kind, retry=RETRY3, compensation_retry=COMP2, timeout=5.0
        )
        if kind == "compensatable":
            step.compensation(undo)
    return saga


SAGA = _saga()


def row(
    name: str, status: StepStatus, attempts: int = 1, phase: Phase = F, **kw: Any
) -> StepRecord:
    return StepRecord(name, phase, status, attempts, started_at=NOW - 1, **kw)


def record(
    *rows: StepRecord,
    status: SagaStatus = SagaStatus.RUNNING,
    cancel: bool = False,
    deadline: float | None = None,
    history: list[Event] | None = None,
    error: str | None = None,
    waiting: str | None = None,
) -> SagaRecord:
    return SagaRecord(
        id="s1",
        name=SAGA.name,
        version=1,
        status=status,
        input={},
        created_at=NOW - 10,
        updated_at=NOW - 1,
        cancel_requested=cancel,
        deadline_at=deadline,
        error=error,
        steps={(r.name, r.phase): r for r in rows},
        history=history or [],
        waiting_for=waiting,
        parked_until=None if waiting is None else NOW - 0.1,
    )


def reply(step: str, ok: bool, phase: Phase = F, **kw: Any) -> Reply:
    return Reply(f"s1:{step}:{phase}", "s1", step, phase, 1, "inventory", ok, **kw)


@dataclass
class Row:
    rule: str
    record: SagaRecord
    happened: Happened
    next: Next
    status: SagaStatus | None = None  # the saga status the Change writes (None: unchanged)
    step: tuple[str, Phase, StepStatus] | None = None  # the last step row it writes
    events: list[EventType] = field(default_factory=list)
    uncertain: bool = False
    unpark: bool = False


A_RUNNING = row("a", S.RUNNING)
TABLE = [
    Row(
        "succeeded: the row SUCCEEDED, go on (merged into the next write)",
        record(A_RUNNING),
        Succeeded("a", output={"ok": 1}),
        Next.CONTINUE,
        step=("a", F, S.SUCCEEDED),
        events=[EventType.STEP_SUCCEEDED],
    ),
    Row(
        "business failure: no retry, the step FAILED (certain), compensate",
        record(A_RUNNING),
        Failed("a", "out of stock", retryable=False),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
    ),
    Row(
        "transient failure with attempts left: back off, retry",
        record(A_RUNNING),
        Failed("a", "connection reset"),
        Next.RETRY,
        events=[EventType.STEP_RETRYING],
    ),
    Row(
        "transient failure, attempts spent: fail and compensate",
        record(row("a", S.RUNNING, attempts=3)),
        Failed("a", "connection reset"),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
    ),
    Row(
        "timeout, attempts spent: uncertain (it may have run), compensated too",
        record(row("a", S.RUNNING, attempts=3)),
        Failed("a", "timed out", uncertain=True),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
        uncertain=True,
    ),
    Row(
        "transient failure while a cancel is recorded: no retry, compensate",
        record(A_RUNNING, cancel=True),
        Failed("a", "connection reset"),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
    ),
    Row(
        "pivot uncertain on every attempt: FAILED for an operator",
        record(row("a", S.SUCCEEDED), row("pay", S.RUNNING, attempts=3)),
        Failed("pay", "timed out", uncertain=True),
        Next.STOP,
        SagaStatus.FAILED,
        ("pay", F, S.FAILED),
        [EventType.STEP_FAILED, EventType.SAGA_FAILED],
        uncertain=True,
    ),
    Row(
        "pivot business failure: compensate the steps before it",
        record(row("a", S.SUCCEEDED), row("pay", S.RUNNING)),
        Failed("pay", "card declined", retryable=False),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("pay", F, S.FAILED),
        [EventType.STEP_FAILED],
    ),
    Row(
        "past the pivot, a business failure: FAILED for an operator",
        record(row("a", S.SUCCEEDED), row("pay", S.SUCCEEDED), row("ship", S.RUNNING)),
        Failed("ship", "no carrier", retryable=False),
        Next.STOP,
        SagaStatus.FAILED,
        ("ship", F, S.FAILED),
        [EventType.STEP_FAILED, EventType.SAGA_FAILED],
    ),
    Row(
        "past the pivot, transient: retried forever, whatever the attempts or a cancel",
        record(
            row("a", S.SUCCEEDED),
            row("pay", S.SUCCEEDED),
            row("ship", S.RUNNING, attempts=50),
            cancel=True,
        ),
        Failed("ship", "connection reset"),
        Next.RETRY,
        events=[EventType.STEP_RETRYING],
    ),
    Row(
        "backoff over, nothing stops it: retry",
        record(A_RUNNING),
        BackoffOver("a", "connection reset"),
        Next.RETRY,
    ),
    Row(
        "backoff over, the deadline passed meanwhile: fail and compensate",
        record(A_RUNNING, deadline=NOW - 1),
        BackoffOver("a", "connection reset"),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED, EventType.DEADLINE_EXPIRED],
    ),
    Row(
        "compensation succeeded: the row COMPENSATED, go on",
        record(
            row("a", S.FAILED), row("a", S.COMPENSATING, phase=C), status=SagaStatus.COMPENSATING
        ),
        Succeeded("a", phase=C),
        Next.CONTINUE,
        step=("a", C, S.COMPENSATED),
        events=[EventType.STEP_COMPENSATED],
    ),
    Row(
        "compensation failed, attempts left: back off, retry (any error)",
        record(
            row("a", S.FAILED), row("a", S.COMPENSATING, phase=C), status=SagaStatus.COMPENSATING
        ),
        Failed("a", "refund api down", phase=C, limit=2),
        Next.RETRY,
        events=[EventType.COMPENSATION_RETRYING],
    ),
    Row(
        "compensation failed, budget spent: FAILED for an operator",
        record(
            row("a", S.FAILED),
            row("a", S.COMPENSATING, 2, phase=C),
            status=SagaStatus.COMPENSATING,
        ),
        Failed("a", "refund api down", phase=C, limit=2),
        Next.STOP,
        SagaStatus.FAILED,
        ("a", C, S.FAILED),
        [EventType.COMPENSATION_FAILED, EventType.SAGA_FAILED],
    ),
    Row(
        "compensation, a programming error: no retry",
        record(
            row("a", S.FAILED), row("a", S.COMPENSATING, phase=C), status=SagaStatus.COMPENSATING
        ),
        Failed("a", "bad output", phase=C, retryable=False, limit=2),
        Next.STOP,
        SagaStatus.FAILED,
        ("a", C, S.FAILED),
        [EventType.COMPENSATION_FAILED, EventType.SAGA_FAILED],
    ),
    Row(
        "reply ok: SUCCEEDED, unparked, go on",
        record(A_RUNNING, waiting="reply:inventory.reserve"),
        ReplyArrived(reply("a", True, output={"id": 7})),
        Next.CONTINUE,
        step=("a", F, S.SUCCEEDED),
        events=[EventType.STEP_SUCCEEDED],
        unpark=True,
    ),
    Row(
        "reply refused: a business failure, compensate, unparked",
        record(A_RUNNING, waiting="reply:inventory.reserve"),
        ReplyArrived(reply("a", False, error="out of stock")),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
        unpark=True,
    ),
    Row(
        "stale reply (the step is no longer in flight): ignored, nothing written",
        record(row("a", S.SUCCEEDED), row("pay", S.RUNNING)),
        ReplyArrived(reply("a", True)),
        Next.IGNORE,
    ),
    Row(
        "reply to a finished saga: ignored",
        record(row("a", S.RUNNING), status=SagaStatus.COMPENSATED),
        ReplyArrived(reply("a", True)),
        Next.IGNORE,
    ),
    Row(
        "compensation reply ok: COMPENSATED, unparked",
        record(
            row("a", S.FAILED),
            row("a", S.COMPENSATING, phase=C),
            status=SagaStatus.COMPENSATING,
            waiting="reply:inventory.release",
        ),
        ReplyArrived(reply("a", True, phase=C)),
        Next.CONTINUE,
        step=("a", C, S.COMPENSATED),
        events=[EventType.STEP_COMPENSATED],
        unpark=True,
    ),
    Row(
        "no reply by parked_until, attempts left: re-send (same key, next attempt)",
        record(A_RUNNING, waiting="reply:inventory.reserve"),
        Timeout(),
        Next.RESEND,
        events=[EventType.STEP_RETRYING],
        unpark=True,
    ),
    Row(
        "no reply, attempts spent: uncertain, compensate",
        record(row("a", S.RUNNING, attempts=3), waiting="reply:inventory.reserve"),
        Timeout(),
        Next.COMPENSATE,
        SagaStatus.COMPENSATING,
        ("a", F, S.FAILED),
        [EventType.STEP_FAILED],
        uncertain=True,
        unpark=True,
    ),
    Row(
        "no reply to a compensation, budget left: re-send",
        record(
            row("a", S.FAILED),
            row("a", S.COMPENSATING, phase=C),
            status=SagaStatus.COMPENSATING,
            waiting="reply:inventory.release",
        ),
        Timeout(),
        Next.RESEND,
        events=[EventType.COMPENSATION_RETRYING],
        unpark=True,
    ),
    Row(
        "no reply to a compensation, budget spent: FAILED for an operator",
        record(
            row("a", S.FAILED),
            row("a", S.COMPENSATING, 2, phase=C),
            status=SagaStatus.COMPENSATING,
            waiting="reply:inventory.release",
        ),
        Timeout(),
        Next.STOP,
        SagaStatus.FAILED,
        ("a", C, S.FAILED),
        [EventType.COMPENSATION_FAILED, EventType.SAGA_FAILED],
        unpark=True,
    ),
    Row(
        "operator retry of a failed compensation: COMPENSATING, error = why it compensated",
        record(
            row("a", S.FAILED),
            row("a", S.FAILED, 2, phase=C),
            status=SagaStatus.FAILED,
            error="compensation of a failed: down",
            history=[
                Event(NOW - 5, EventType.STEP_FAILED, "a", None, 1, "out of stock"),
                Event(NOW - 4, EventType.COMPENSATION_STARTED, "a", C, 1),
            ],
        ),
        RetryRequested(),
        Next.CONTINUE,
        SagaStatus.COMPENSATING,
    ),
    Row(
        "operator retry of a failed step past the pivot: RUNNING again",
        record(row("ship", S.FAILED), status=SagaStatus.FAILED, error="ship: no carrier"),
        RetryRequested(),
        Next.CONTINUE,
        SagaStatus.RUNNING,
    ),
]


@pytest.mark.parametrize("case", TABLE, ids=[r.rule for r in TABLE])
def test_rule(case: Row) -> None:
    decision = decide(SAGA, case.record, case.happened, NOW)
    change = decision.change
    assert decision.next is case.next
    assert change.status is case.status
    if case.step is None:
        assert not change.steps
    else:
        last = change.steps[-1]
        assert (last.name, last.phase, last.status) == case.step
        assert last.uncertain is case.uncertain
        assert last.finished_at == NOW
    assert [e.type for e in change.events] == case.events
    assert change.unpark is case.unpark
    if case.status in (SagaStatus.FAILED, SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED):
        assert change.release_lease, "a terminal change hands the lease back"


def test_retry_delay_follows_the_policy() -> None:
    decision = decide(SAGA, record(row("a", S.RUNNING, attempts=2)), Failed("a", "reset"), NOW)
    assert decision.delay == pytest.approx(1.0)  # 0.5 * 2 ** (2 - 1), no jitter


def test_timeout_resend_has_no_backoff_and_says_why() -> None:
    decision = decide(SAGA, record(A_RUNNING, waiting="reply:x.y"), Timeout(), NOW)
    assert decision.delay == 0.0
    assert decision.change.events[0].detail == NO_REPLY


def test_operator_retry_of_compensation_restores_the_original_reason() -> None:
    decision = decide(SAGA, TABLE[-2].record, RetryRequested(release_lease=True), NOW)
    assert decision.change.error == "out of stock"
    assert decision.change.release_lease


def test_cancel_clears_the_flag_when_compensation_starts() -> None:
    decision = decide(SAGA, record(A_RUNNING, cancel=True), Failed("a", "x", retryable=False), NOW)
    assert decision.change.clear_cancel


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ((), False),
        ((row("a", S.SUCCEEDED),), False),
        ((row("a", S.SUCCEEDED), row("pay", S.RUNNING)), False),
        ((row("a", S.SUCCEEDED), row("pay", S.SUCCEEDED)), True),
        ((row("ship", S.RUNNING),), True),
    ],
)
def test_past_pivot(rows: tuple[StepRecord, ...], expected: bool) -> None:
    assert past_pivot(SAGA, record(*rows)) is expected


def test_last_cancellable_is_the_pivot() -> None:
    assert last_cancellable(SAGA) == "pay"


@pytest.mark.parametrize(
    ("step_row", "expected"),
    [
        (None, False),
        (row("a", S.SUCCEEDED), True),
        (row("a", S.RUNNING), True),  # crashed mid-step: may have run
        (row("a", S.FAILED), False),
        (row("a", S.FAILED, uncertain=True), True),  # timed out: may have run
    ],
)
def test_needs_undo(step_row: StepRecord | None, expected: bool) -> None:
    assert needs_undo(step_row) is expected


def test_stop_reason_cancel_before_deadline() -> None:
    assert stop_reason(record(cancel=True, deadline=NOW - 1), NOW) == (
        EventType.CANCEL_REQUESTED,
        "cancelled",
    )
    assert stop_reason(record(deadline=NOW), NOW) == (
        EventType.DEADLINE_EXPIRED,
        "deadline expired",
    )
    assert stop_reason(record(deadline=NOW + 1), NOW) is None


@pytest.mark.parametrize(
    ("comp_row", "expected"),
    [
        (None, 2),  # the policy's attempts
        (row("a", S.COMPENSATING, 1, phase=C), 2),  # crashed mid-compensation: the rest
        (row("a", S.COMPENSATING, 2, phase=C), 3),  # crashed on the last: one more try
        (row("a", S.FAILED, 2, phase=C), 4),  # an operator's retry: a fresh budget
    ],
)
def test_compensation_limit(comp_row: StepRecord | None, expected: int) -> None:
    assert compensation_limit(COMP2, comp_row) == expected


def test_a_written_change_renewed_is_the_change_a_step_success_makes() -> None:
    """``step_succeeded(..., written=change)`` (the runner's reuse of a change it wrote) gives
    what a new Change would be, whatever the written change held: every field is reset."""

    def effect(conn: Any) -> None:
        return None

    row = StepRecord("a", F, S.RUNNING, 1, None, None, False, NOW)
    written = Change(
        SagaStatus.COMPENSATING,
        "why",
        [StepRecord("b", F, S.FAILED, 2)],
        [Event(NOW, EventType.STEP_FAILED, "b")],
        release_lease=True,
        clear_cancel=True,
        unless_cancelled=True,
        checked=True,
        effects=(effect,),
        outbox=(OutboxMessage("m", "s", "topic", {}, NOW),),
        park=Park("timer", NOW),
        unpark=True,
        take=Take(1, NOW),
    )
    fresh = Change()
    unset = [f.name for f in fields(Change) if getattr(written, f.name) == getattr(fresh, f.name)]
    assert not unset, f"give the written change a value for {unset} here"
    steps, events = written.steps, written.events
    renewed = step_succeeded(row, {"n": 1}, NOW + 1, (effect,), written)
    assert renewed is written
    assert renewed.steps is steps
    assert renewed.events is events
    assert renewed == step_succeeded(row, {"n": 1}, NOW + 1, (effect,))
