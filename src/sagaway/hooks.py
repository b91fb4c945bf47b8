"""Engine hooks: where metrics, tracing and logs plug into the engine without living in it.

Subclass :class:`Hook`, override the methods you need (each does nothing by default) and register
it with ``Engine(hooks=[...])`` or ``engine.add_hook(...)``, the way dramatiq's middleware works.
Every method runs on the engine's event loop, synchronously, in the task driving the saga: keep
it fast and never block. A hook that raises is logged (``sagaway.hooks``) and the saga goes on as
if it had not been called; the next hook still runs.

With no hook registered the engine calls nothing at all: the runner is handed no hook chain, so a
step costs what it cost before hooks existed.

The records passed in are the engine's live copies: read them, never keep or mutate them (copy
what you need). ``record.history`` may be empty (a saga claimed from the store is loaded without
its history).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from sagaway.context import StepContext
from sagaway.state import Change, Phase, SagaRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sagaway.definition import Step
    from sagaway.transport.base import Command

log = logging.getLogger("sagaway.hooks")

__all__ = ["ClaimReason", "Hook", "HookChain", "StepKey", "StepOutcome", "StepSink"]


class StepOutcome(StrEnum):
    """How one attempt of a step's action or compensation ended."""

    SUCCEEDED = "succeeded"  # the action succeeded, or the compensation compensated
    RETRYING = "retrying"  # it failed and will be tried again (after a backoff)
    FAILED = "failed"  # it failed for good: compensation starts, or the saga stops FAILED


StepKey = tuple[str, str, Phase, StepOutcome]
"""An attempt's saga name, step name, phase and outcome: what a step sink is keyed by."""


class StepSink:
    """Where the engine appends the seconds of each attempt that ends, for a hook that only
    tallies them (see ``Hook.step_sink``): an attempt that succeeded under ``forward_ok`` or
    ``undo_ok`` by its ``Step`` (hashed by identity: the runner's path, once per step), any
    other end (a retry, a failure, a parked step's reply) under ``ended`` by its labels."""

    __slots__ = ("ended", "forward_ok", "undo_ok")

    def __init__(self) -> None:
        self.forward_ok: defaultdict[Step[Any], list[float]] = defaultdict(list)
        self.undo_ok: defaultdict[Step[Any], list[float]] = defaultdict(list)
        self.ended: defaultdict[StepKey, list[float]] = defaultdict(list)


class ClaimReason(StrEnum):
    """Why this engine began driving a saga (see :meth:`Hook.after_claim`)."""

    STARTED = "started"  # created by this engine's ``start``
    RECOVERED = "recovered"  # claimed by a recovery pass or ``resume`` (its lease had expired)
    RETRIED = "retried"  # an operator's retry of a FAILED saga
    REPLIED = "replied"  # a participant's reply reached the parked saga


CLAIM_STARTED: Final = ClaimReason.STARTED  # (read once a saga: why a constant, sagaway.statuses)


# Users subclass it: in the compiled build (README "Compiled build") a compiled class refuses
# Python subclasses unless it says so.
@mypyc_attr(allow_interpreted_subclasses=True)
class Hook:
    """Base class for engine hooks: every method does nothing. Override what you need."""

    # A hook that only tallies attempts and commits (the metrics) may set these instead of
    # overriding ``after_step`` / ``after_commit``: the engine then appends every attempt's
    # duration to ``step_sink`` and every commit's latency to ``commit_sink``, at the moment
    # ``after_step`` / ``after_commit`` would have been called: a list append instead of two
    # Python calls per step and commit. The hook empties them when it likes, from the front
    # (the loop keeps appending).
    step_sink: StepSink | None = None
    commit_sink: list[float] | None = None
    # True for a hook whose methods cannot raise (the metrics: a few dict updates): when it is
    # the only hook of a method, the engine calls it directly, not through the chain's guard
    # (a Python call less per saga start, claim and finish).
    unguarded = False

    def saga_started(self, record: SagaRecord) -> None:
        """A new saga was recorded by this engine's ``start`` (once per saga: a repeated
        idempotency key does not call it). An API-only engine calls it too: ``record`` is then
        PENDING, for a worker to run."""

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        """This engine now holds the saga's lease and is about to drive it."""

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        """An attempt of a step's action (``ctx.phase`` forward) or compensation is about to
        run; it is already recorded RUNNING/COMPENSATING. Runs in the task that then awaits the
        action, so a context variable set here (a tracing span) is seen by the action."""

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        """The attempt started by ``before_step`` ended (``ctx`` is the same object); ``seconds``
        is how long the action ran. Its outcome is not durable yet: it is written with the next
        commit (see ``after_commit``). An attempt that enlisted ``ctx.atomic()`` writes is
        told once that commit is done (succeeded) or refused (failed, a compensation retrying),
        since a write may refuse it: one call an attempt either way.

        A remote step on a message transport parks the saga while its command is out: both
        methods are then called when the reply arrives (on the engine that takes it, maybe
        another process), one right after the other, ``seconds`` running from the command's
        dispatch to the reply; or, when none came, as the park times out (``error``: "timed
        out waiting for a reply", RETRYING while the command is sent again, else FAILED)."""

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        """A transition was written durably; ``record`` already includes it. ``seconds`` is the
        write's latency as the saga saw it (group-commit wait included)."""

    def before_dispatch(self, record: SagaRecord, command: Command) -> None:
        """A remote step's command is about to leave this engine: sent over a request/response
        transport, or written to the outbox with the transition that parks the saga. A hook may
        add to ``command.headers`` (tracing writes ``traceparent``): they travel with the
        command (HTTP headers, AMQP message headers) to the participant."""

    def on_park(self, record: SagaRecord, reason: str) -> None:
        """The saga stopped to wait (a reply, a signal, a timer) and holds no task any more:
        parked by its run, or claimed early and handed back (its wait not over). Each
        ``after_claim`` ends in exactly one of ``on_finish``, ``on_release`` and ``on_park``."""

    def on_resume(self, record: SagaRecord, reason: str) -> None:
        """A parked saga was woken (``reason``: what it waited for arrived or its deadline
        passed)."""

    def on_finish(self, record: SagaRecord) -> None:
        """The saga reached a terminal status (SUCCEEDED, COMPENSATED, or FAILED for an
        operator) under this engine."""

    def on_release(self, record: SagaRecord, reason: str) -> None:
        """This engine stopped driving an unfinished saga: lease lost, engine closing, or the
        log could not be written (another engine, or this one later, resumes it)."""


_METHODS = (
    "saga_started",
    "after_claim",
    "before_step",
    "after_step",
    "after_commit",
    "before_dispatch",
    "on_park",
    "on_resume",
    "on_finish",
    "on_release",
)


def _only(methods: tuple[Callable[..., None], ...]) -> Callable[..., None] | None:
    return methods[0] if len(methods) == 1 else None


def _only_sink(methods: tuple[Callable[..., None], ...], sinks: tuple[Any, ...]) -> Any:
    return sinks[0] if not methods and len(sinks) == 1 else None


def _overrides(hook: Hook, name: str) -> bool:
    return getattr(type(hook), name, None) is not getattr(Hook, name)


class HookChain(Hook):
    """The hooks of one engine, called in registration order, each one guarded.

    Only the hooks that override a method are called for it, so a metrics hook that ignores
    ``before_step`` costs nothing there. An exception in a hook is logged, never raised.
    """

    def __init__(self, hooks: Iterable[Hook]) -> None:
        self.hooks = tuple(hooks)
        self._by_method: dict[str, tuple[Callable[..., None], ...]] = {
            name: tuple(getattr(h, name) for h in self.hooks if _overrides(h, name))
            for name in _METHODS
        }
        by = self._by_method
        # The only hook of a hot method, or None: called without a loop (a loop over a tuple
        # allocates an iterator), as most engines have one hook there (the metrics).
        self._step1, self._commit1 = _only(by["after_step"]), _only(by["after_commit"])
        self._saga_started, self._after_claim = by["saga_started"], by["after_claim"]
        self._before_step, self._after_step = by["before_step"], by["after_step"]
        self._after_commit, self._on_finish = by["after_commit"], by["on_finish"]
        self._on_park, self._on_resume = by["on_park"], by["on_resume"]
        self._on_release = by["on_release"]
        self._before_dispatch = by["before_dispatch"]
        unguarded = [hook for hook in self.hooks if hook.unguarded]
        for name in ("saga_started", "after_claim", "on_finish", "on_release", "on_park"):
            only = by[name]
            if len(only) == 1 and getattr(only[0], "__self__", None) in unguarded:
                setattr(self, name, only[0])  # the hook's own method: no guard needed
        self._step_sinks = tuple(h.step_sink for h in self.hooks if h.step_sink is not None)
        self._commit_sinks = tuple(h.commit_sink for h in self.hooks if h.commit_sink is not None)
        # What the runner reads once per saga (attributes, not wants(): a call each).
        self.wants_before_step = bool(self._before_step)
        self.wants_steps = bool(self._before_step or self._after_step or self._step_sinks)
        self.wants_commits = bool(self._after_commit or self._commit_sinks)
        # The one sink of an attempt's end (commit) when no hook is to be called for it: the
        # runner appends to it itself instead of calling after_step (after_commit).
        step_sink = _only_sink(self._after_step, self._step_sinks)
        self.forward_ok = None if step_sink is None else step_sink.forward_ok
        self.undo_ok = None if step_sink is None else step_sink.undo_ok
        self.commit_sink = _only_sink(self._after_commit, self._commit_sinks)

    def wants(self, name: str) -> bool:
        """True if some hook overrides ``name`` or, for ``after_step`` and ``after_commit``,
        has a sink for them (the runner skips timing nobody reads)."""
        if name == "after_step" and self._step_sinks:
            return True
        if name == "after_commit" and self._commit_sinks:
            return True
        return bool(self._by_method[name])

    @staticmethod
    def _call(methods: tuple[Callable[..., None], ...], *args: object) -> None:
        for method in methods:
            try:
                method(*args)
            except Exception:  # a hook must never break the saga it observes
                log.exception("hook %s failed", getattr(method, "__qualname__", method))

    # The methods called for every saga and step loop inline rather than through ``_call``:
    # one Python call less each, on every saga, step attempt and commit.

    def saga_started(self, record: SagaRecord) -> None:
        for method in self._saga_started:
            try:
                method(record)
            except Exception:
                log.exception("hook %s failed", method.__qualname__)

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        for method in self._after_claim:
            try:
                method(record, reason)
            except Exception:
                log.exception("hook %s failed", method.__qualname__)

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        for method in self._before_step:
            try:
                method(record, ctx)
            except Exception:
                log.exception("hook %s failed", method.__qualname__)

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        one = self._step1
        if one is not None:
            try:
                one(record, ctx, outcome, error, seconds)
            except Exception:
                log.exception("hook %s failed", one.__qualname__)
        else:
            for method in self._after_step:
                try:
                    method(record, ctx, outcome, error, seconds)
                except Exception:
                    log.exception("hook %s failed", method.__qualname__)
        for sink in self._step_sinks:
            sink.ended[ctx.saga_name, ctx.step, ctx.phase, outcome].append(seconds)

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        one = self._commit1
        if one is not None:
            try:
                one(record, change, seconds)
            except Exception:
                log.exception("hook %s failed", one.__qualname__)
        else:
            for method in self._after_commit:
                try:
                    method(record, change, seconds)
                except Exception:
                    log.exception("hook %s failed", method.__qualname__)
        for sink in self._commit_sinks:
            sink.append(seconds)

    def before_dispatch(self, record: SagaRecord, command: Command) -> None:
        self._call(self._before_dispatch, record, command)

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self._call(self._on_park, record, reason)

    def on_resume(self, record: SagaRecord, reason: str) -> None:
        self._call(self._on_resume, record, reason)

    def on_finish(self, record: SagaRecord) -> None:
        for method in self._on_finish:
            try:
                method(record)
            except Exception:
                log.exception("hook %s failed", method.__qualname__)

    def on_release(self, record: SagaRecord, reason: str) -> None:
        self._call(self._on_release, record, reason)
