"""The records kept in the saga log (with the statuses of ``statuses``), and applying a change.

Nothing here does I/O: the engine decides with these rules, the stores persist the records.
Times are POSIX seconds (float) supplied by the engine's clock, so stores never read a clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

# The statuses, their transitions and the timeline's event types live in ``statuses``; they are
# re-exported here, where the records that hold them are.
from sagaway.statuses import ACTIVE_STATUSES as ACTIVE_STATUSES
from sagaway.statuses import FORWARD, ON_SAGA_STARTED, ON_STEP_STARTED, SAGA_RUNNING, STEP_RUNNING
from sagaway.statuses import PRUNABLE_STATUSES as PRUNABLE_STATUSES
from sagaway.statuses import TERMINAL as TERMINAL
from sagaway.statuses import EventType as EventType
from sagaway.statuses import Phase as Phase
from sagaway.statuses import SagaStatus as SagaStatus
from sagaway.statuses import StepStatus as StepStatus
from sagaway.statuses import check_saga_transition as check_saga_transition

if TYPE_CHECKING:
    from sagaway.definition import Saga

JSON = Any
"""A JSON-compatible value (dict, list, str, int, float, bool, None), as persisted."""

Effect = Callable[[Any], Any]
"""A write run inside a transition's transaction, given the store's connection."""


# The records built per step write their own ``__init__`` (``init=False``), which the compiled
# build (README "Compiled build") compiles to C: the generated one stays Python there (~3,700
# instructions per ``Change``). Same signature as the generated one; a list or dict default is
# made per call.
@dataclass(slots=True, init=False)
class StepRecord:
    """One row per (step, phase): the durable outcome of a step's action or compensation."""

    name: str
    phase: Phase
    status: StepStatus
    attempts: int = 0
    output: JSON = None
    error: str | None = None
    # True when the last attempt ended without a known outcome (timeout, crash): the action may
    # have taken effect, so a compensation must run for it even though it "failed".
    uncertain: bool = False
    started_at: float | None = None
    finished_at: float | None = None

    def __init__(
        self,
        name: str,
        phase: Phase,
        status: StepStatus,
        attempts: int = 0,
        output: JSON = None,
        error: str | None = None,
        uncertain: bool = False,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> None:
        self.name, self.phase, self.status = name, phase, status
        self.attempts, self.output, self.error = attempts, output, error
        self.uncertain, self.started_at, self.finished_at = uncertain, started_at, finished_at


@dataclass(slots=True, init=False)
class Event:
    """One entry of a saga's append-only history (the timeline). Stores assign the order."""

    at: float
    type: EventType
    step: str | None = None
    phase: Phase | None = None
    attempt: int | None = None
    detail: str | None = None

    def __init__(
        self,
        at: float,
        type: EventType,
        step: str | None = None,
        phase: Phase | None = None,
        attempt: int | None = None,
        detail: str | None = None,
    ) -> None:
        self.at, self.type, self.step = at, type, step
        self.phase, self.attempt, self.detail = phase, attempt, detail


@dataclass(slots=True, init=False)
class SagaRecord:
    """A saga instance as the log knows it: the instance row, its step rows, its history."""

    id: str
    name: str
    version: int
    status: SagaStatus
    input: JSON
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
    deadline_at: float | None = None
    cancel_requested: bool = False
    error: str | None = None
    steps: dict[tuple[str, Phase], StepRecord] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    # A parked saga (see ``Park``): what it waits for ("reply:inventory.reserve",
    # "signal:payment_confirmed", "timer") and until when. Parked sagas hold no lease: ``claim``
    # skips them until ``parked_until`` passes (then the rules see a timeout); a reply or a
    # signal takes them with ``acquire``.
    waiting_for: str | None = None
    parked_until: float | None = None
    # Pinned by a user (``sagaway pin``): retention never removes it.
    pinned: bool = False
    # The definition the record was read back with (set by the engine), so ``output`` can
    # decode step outputs to their declared types. Not stored; None for a bare store read.
    definition: Saga | None = field(default=None, compare=False, repr=False)
    # A token that changes with every write of the saga's row, read by ``peek``: a
    # ``Change.take`` built from it commits only if nothing wrote the row since (stores with
    # the ``TakingStore`` tier; 0 where a read does not fill it in).
    fence: int = field(default=0, compare=False)

    def __init__(
        self,
        id: str,
        name: str,
        version: int,
        status: SagaStatus,
        input: JSON,
        created_at: float,
        updated_at: float,
        idempotency_key: str | None = None,
        owner: str | None = None,
        lease_expires_at: float | None = None,
        deadline_at: float | None = None,
        cancel_requested: bool = False,
        error: str | None = None,
        steps: dict[tuple[str, Phase], StepRecord] | None = None,
        history: list[Event] | None = None,
        waiting_for: str | None = None,
        parked_until: float | None = None,
        pinned: bool = False,
        definition: Saga | None = None,
        fence: int = 0,
    ) -> None:
        self.id, self.name, self.version = id, name, version
        self.status, self.input, self.created_at = status, input, created_at
        self.updated_at, self.idempotency_key, self.owner = updated_at, idempotency_key, owner
        self.lease_expires_at, self.deadline_at = lease_expires_at, deadline_at
        self.cancel_requested, self.error = cancel_requested, error
        self.waiting_for, self.parked_until = waiting_for, parked_until
        self.pinned, self.definition, self.fence = pinned, definition, fence
        self.steps = {} if steps is None else steps
        self.history = [] if history is None else history

    def step(self, name: str, phase: Phase = Phase.FORWARD) -> StepRecord | None:
        return self.steps.get((name, phase))

    def copy(self, *, history: bool = True) -> SagaRecord:
        """A copy safe to hand out: its own step map and history list. Step rows are shared,
        which is safe because nothing mutates a StepRecord once it is committed."""
        # Positional, in field order: every saga waited for gets one, where keyword
        # construction of this slotted dataclass costs ~40% more.
        return SagaRecord(
            self.id,
            self.name,
            self.version,
            self.status,
            self.input,
            self.created_at,
            self.updated_at,
            self.idempotency_key,
            self.owner,
            self.lease_expires_at,
            self.deadline_at,
            self.cancel_requested,
            self.error,
            dict(self.steps),
            list(self.history) if history else [],
            self.waiting_for,
            self.parked_until,
            self.pinned,
            self.definition,
            self.fence,
        )

    def output(self, step: str) -> Any:
        """The output of a step's action as its declared type (the step's return annotation:
        a ``Reservation``, not a dict), or None if the step has not succeeded.

        Records read through an ``Engine`` (``wait``, ``get``) know their definition; a record
        read from a bare store, or of a definition the engine does not know, gives the
        recorded JSON, as ``raw_output`` always does."""
        row = self.steps.get((step, Phase.FORWARD))
        if row is None or row.status is not StepStatus.SUCCEEDED:
            return None
        if self.definition is None:
            return row.output
        return self.definition.get_step(step).decode_output(row.output)

    def raw_output(self, step: str) -> JSON:
        """The recorded (JSON-encoded) output of a step's action, or None."""
        row = self.steps.get((step, Phase.FORWARD))
        return None if row is None else row.output


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish once the transition that made it is durable (the outbox).

    Written in the same atomic write as its ``Change``; a relay publishes it (at least once)
    and then deletes it. ``id`` is the receiver's deduplication key: the same on every
    re-publish, so an inbox applies it once. ``topic`` is the routing key ("inventory.reserve");
    ``body`` is what the transport sends (JSON), ``headers`` travel with it (traceparent)."""

    id: str
    saga_id: str
    topic: str
    body: JSON
    created_at: float
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Park:
    """Release the saga until something from outside arrives: it holds no task, no memory, no
    lease; its row records ``waiting_for`` and ``until`` (when the rules treat it as timed
    out). Any engine that receives what it waits for takes it over with ``acquire``."""

    waiting_for: str
    until: float


@dataclass(frozen=True, slots=True)
class Take:
    """Take the saga's lease in the write itself, fenced on a read of its row (``peek``): the
    write applies only if the row's ``fence`` is still ``fence`` (nothing wrote it since) and
    no other engine holds a live lease; the lease then runs until ``until``. A parked saga
    woken by a signal or a reply is taken and moved on in one durable write instead of two.
    Else the store raises ``TakeConflict`` and writes nothing."""

    fence: int
    until: float


@dataclass(slots=True, init=False)
class Change:
    """Everything one durable transition writes, atomically: the unit of the write-ahead log."""

    status: SagaStatus | None = None
    error: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # Terminal transitions hand the lease back so no engine claims the saga again.
    release_lease: bool = False
    clear_cancel: bool = False
    # Apply only if no cancel is recorded (else the store raises CancelPending, writes nothing):
    # set on the write that starts a step a cancel can still pre-empt, so that a cancel and the
    # step's start are ordered by the log itself (see ``cancel_refusal``).
    unless_cancelled: bool = False
    # Every value in it was already checked storable where it was made (the runner): stores
    # skip their own check (``_codec.check_change``), which would encode each output again.
    checked: bool = False
    # Writes a step enlisted with ``ctx.atomic()``: run by the store inside this transition's
    # transaction, so they commit if and only if the step's outcome does.
    effects: tuple[Effect, ...] = ()
    # Outgoing messages, written in the same atomic write (stores with the outbox tier).
    outbox: tuple[OutboxMessage, ...] = ()
    # Park the saga (sets waiting_for/parked_until and releases the lease), or, with
    # ``unpark``, clear what it waited for (the reply or signal has been applied).
    park: Park | None = None
    unpark: bool = False
    # Take the lease with this write (``Take``), instead of holding it already.
    take: Take | None = None

    def __init__(
        self,
        status: SagaStatus | None = None,
        error: str | None = None,
        steps: list[StepRecord] | None = None,
        events: list[Event] | None = None,
        release_lease: bool = False,
        clear_cancel: bool = False,
        unless_cancelled: bool = False,
        checked: bool = False,
        effects: tuple[Effect, ...] = (),
        outbox: tuple[OutboxMessage, ...] = (),
        park: Park | None = None,
        unpark: bool = False,
        take: Take | None = None,
    ) -> None:
        self.status, self.error, self.release_lease = status, error, release_lease
        self.clear_cancel, self.unless_cancelled = clear_cancel, unless_cancelled
        self.checked, self.effects, self.outbox = checked, effects, outbox
        self.park, self.unpark, self.take = park, unpark, take
        self.steps = [] if steps is None else steps
        self.events = [] if events is None else events

    def renew(self, step: StepRecord, event: Event, effects: tuple[Effect, ...]) -> Change:
        """This change, once written, made into ``Change(steps=[step], events=[event],
        effects=effects)`` (its lists emptied and reused): for a change nothing holds once it is
        written (``SagaRun``: on a store whose ``inline_commit`` keeps none, with no listener
        or hook given it). A change a transition makes and frees is ~750 instructions, compiled.
        Every field is set here: a field added to Change must be added here too (a unit test
        checks the result equals the new Change)."""
        self.status, self.error, self.release_lease = None, None, False
        self.clear_cancel, self.unless_cancelled = False, False
        self.checked, self.effects, self.outbox = False, effects, ()
        self.park, self.unpark, self.take = None, False, None
        steps, events = self.steps, self.events
        steps.clear()
        steps.append(step)
        events.clear()
        events.append(event)
        return self


@dataclass(slots=True, init=False)
class NewSaga:
    """The first record of a saga, created atomically with its idempotency key."""

    id: str
    name: str
    version: int
    input: JSON
    at: float
    status: SagaStatus = SagaStatus.PENDING
    idempotency_key: str | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
    deadline_at: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    checked: bool = False  # as Change.checked (Engine.start checks the input itself)

    def __init__(
        self,
        id: str,
        name: str,
        version: int,
        input: JSON,
        at: float,
        status: SagaStatus = SagaStatus.PENDING,
        idempotency_key: str | None = None,
        owner: str | None = None,
        lease_expires_at: float | None = None,
        deadline_at: float | None = None,
        steps: list[StepRecord] | None = None,
        events: list[Event] | None = None,
        checked: bool = False,
    ) -> None:
        self.id, self.name, self.version = id, name, version
        self.input, self.at, self.status = input, at, status
        self.idempotency_key, self.owner = idempotency_key, owner
        self.lease_expires_at, self.deadline_at = lease_expires_at, deadline_at
        self.steps = [] if steps is None else steps
        self.events = [] if events is None else events
        self.checked = checked


def apply_change(record: SagaRecord, change: Change, at: float) -> None:
    """Apply a change to an in-memory record, exactly as a store applies it to its rows."""
    if change.status is not None:
        record.status = change.status
        record.error = change.error
    for step in change.steps:
        record.steps[(step.name, step.phase)] = step
    record.history.extend(change.events)
    record.updated_at = at
    if change.release_lease:
        record.owner = None
        record.lease_expires_at = None
    if change.clear_cancel:
        record.cancel_requested = False
    if change.park is not None:
        record.waiting_for = change.park.waiting_for
        record.parked_until = change.park.until
        record.owner = None
        record.lease_expires_at = None
    elif change.unpark:
        record.waiting_for = None
        record.parked_until = None


def cancel_refusal(
    saga_id: str,
    status: SagaStatus,
    cancel_requested: bool,
    started: Collection[str],
    until: str | None,
) -> str | None:
    """Why a cancel of this saga would not take effect now; None when it will.

    Every store decides with this rule, atomically with recording the outcome, from what its
    log says: ``started`` names the steps with a forward row, ``until`` the last step a cancel
    can still stop before (the pivot, or the last compensatable step: the runner checks for a
    cancel before it starts each such step, in the same atomic write that starts it, see
    ``Change.unless_cancelled``). ``until=None``: no step can be stopped before, or the caller
    does not know the definition: only a saga with no step started can be cancelled for sure.
    """
    if not status.is_active:
        return f"saga {saga_id} is {status}: nothing to cancel"
    if status is SagaStatus.COMPENSATING:
        return f"saga {saga_id} is already compensating"
    if cancel_requested:
        return None  # already on its way: asking twice changes nothing
    if until is None:
        if started:
            return (
                f"too late to cancel saga {saga_id}: its steps have started and none left "
                "can be stopped before it runs (retriable steps, or a definition unknown here)"
            )
        return None
    if until in started:
        return (
            f"too late to cancel saga {saga_id}: step {until!r}, the last one a cancel can "
            "stop it before (its pivot or last compensatable step), has started"
        )
    return None


def refused_cancel(event: Event, reason: str) -> Event:
    """The history entry of a cancel refused for ``reason`` (``event`` is the request)."""
    return Event(at=event.at, type=EventType.CANCEL_REFUSED, detail=reason)


def record_from_new(new: NewSaga) -> SagaRecord:
    # Positional, in SagaRecord's field order: called once or twice per saga started (the
    # store's copy and, unless the store shares it, the engine's), where keyword construction
    # costs ~40% more. The step map by a loop: a dict comprehension is a function call more.
    steps = {}
    for step in new.steps:
        steps[(step.name, step.phase)] = step
    return SagaRecord(
        new.id,  # id
        new.name,  # name
        new.version,  # version
        new.status,  # status
        new.input,  # input
        new.at,  # created_at
        new.at,  # updated_at
        new.idempotency_key,  # idempotency_key
        new.owner,  # owner
        new.lease_expires_at,  # lease_expires_at
        new.deadline_at,  # deadline_at
        False,  # cancel_requested
        None,  # error
        steps,  # steps
        list(new.events),  # history
    )


def new_saga_id(now: float) -> str:
    """Time-ordered (so indexes append) and random (so engines never collide)."""
    try:
        tail = _random_tails.pop()
    except IndexError:
        tail = _more_random_tails()
    millis = int(now * 1000)
    last = _last_prefix.millis_and_text  # one tuple: read and replaced whole (threads)
    if last[0] != millis:
        # format(), not an f-string: compiled, an f-string with a format spec is a str.format
        # method call; and format() itself ~2k instructions, so once a millisecond.
        last = _last_prefix.millis_and_text = (millis, format(millis, "012x"))
    return last[1] + tail


class _Prefix:
    """The time part of the last saga id made, and its millisecond."""

    def __init__(self) -> None:
        self.millis_and_text: tuple[int, str] = (-1, "")


_last_prefix: Final = _Prefix()


# 80 random bits a saga id, in hex, drawn from os.urandom 1024 ids at a time: a getrandom
# system call per saga was ~3% of an in-memory saga's CPU time. list.pop and extend are
# atomic under the GIL, so threads share the pool safely; a forked child must not hand out
# its parent's ids, so it starts with an empty pool.
_random_tails: Final[list[str]] = []  # (Final: compiled, a C static, not a dict look-up)
_TAILS_A_DRAW = 1024


def _more_random_tails() -> str:
    text = os.urandom(10 * _TAILS_A_DRAW).hex()
    _random_tails.extend([text[i : i + 20] for i in range(20, len(text), 20)])
    return text[:20]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_tails.clear)


def new_saga(
    saga_id: str,
    name: str,
    version: int,
    first_step: str,
    input: JSON,
    at: float,
    idempotency_key: str | None,
    deadline_at: float | None,
    owner: str | None,
    lease_expires_at: float,
) -> NewSaga:
    """The first record of a saga, its input and key already checked. With an ``owner`` (an
    engine that runs it) it starts RUNNING, leased, with ``first_step`` RUNNING in the same write;
    without (an API-only engine) it is queued PENDING for a worker to claim."""
    if owner is None:
        return NewSaga(
            id=saga_id,
            name=name,
            version=version,
            input=input,
            at=at,
            idempotency_key=idempotency_key,
            deadline_at=deadline_at,
            events=[Event(at=at, type=EventType.SAGA_CREATED)],
            checked=True,
        )
    # Positional, each in its one final form (field order above): this runs once per saga,
    # where keyword construction of these dataclasses costs ~40% more.
    return NewSaga(
        saga_id,  # id
        name,  # name
        version,  # version
        input,  # input
        at,  # at
        SAGA_RUNNING,  # status
        idempotency_key,  # idempotency_key
        owner,  # owner
        lease_expires_at,  # lease_expires_at
        deadline_at,  # deadline_at
        # name, phase, status, attempts, output, error, uncertain, started_at
        [StepRecord(first_step, FORWARD, STEP_RUNNING, 1, None, None, False, at)],
        [
            Event(at, ON_SAGA_STARTED),
            # at, type, step, phase, attempt, detail
            Event(at, ON_STEP_STARTED, first_step, None, 1, owner),
        ],
        True,  # checked: the engine checked the input and key, the owner id when it opened
    )
