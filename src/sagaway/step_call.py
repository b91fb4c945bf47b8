"""Calling a step's action or compensation: its timeout, its result as the log stores it, and
its error as the log words it. The runner's per-step machinery, free of the write-ahead protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Iterator, Mapping
from time import monotonic
from types import CoroutineType, coroutine
from typing import Any

from pydantic import ValidationError

from sagaway._first_send import first_send
from sagaway.definition import Action, Saga, Step, describe_validation
from sagaway.errors import DecodeError, StepFailed, UnstorableValue
from sagaway.state import (
    SagaRecord,
)
from sagaway.statuses import (
    FORWARD,
    STEP_SUCCEEDED,
)
from sagaway.store._codec import check_value, plainly_storable, printable

# What call_with_timeout drives by hand: the action's coroutine, or another awaitable's iterator.
Steps = Coroutine[Any, Any, Any] | Generator[Any, Any, Any]


class StepResults(Mapping[str, Any]):
    """Earlier steps' outputs, decoded on first access (most steps read few or none)."""

    def __init__(self, saga: Saga, record: SagaRecord) -> None:
        self._saga, self._record = saga, record
        self._cache: dict[str, Any] = {}

    def _done(self) -> Iterator[str]:
        for step in self._saga.steps:
            row = self._record.steps.get((step.name, FORWARD))
            if row is not None and row.status is STEP_SUCCEEDED:
                yield step.name

    def __getitem__(self, name: str) -> Any:
        if name not in self._cache:
            row = self._record.steps.get((name, FORWARD))
            if row is None or row.status is not STEP_SUCCEEDED:
                raise KeyError(name)
            self._cache[name] = self._saga.get_step(name).decode_output(row.output)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return self._done()

    def __len__(self) -> int:
        return sum(1 for _ in self._done())


def describe_error(exc: BaseException) -> str:
    """An exception as the error text the log keeps (storable: see ``printable``)."""
    if isinstance(exc, StepFailed):
        return printable(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, DecodeError):  # its message says all, on one line
        return printable(str(exc))
    # pydantic's own text spans many lines: one line for the log, the CLI and the API.
    text = (
        f"{exc.title}: {describe_validation(exc)}" if isinstance(exc, ValidationError) else str(exc)
    )
    return printable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def storable_output(step: Step[Any], value: Any) -> Any:
    """The step's result as the log will store it, or ``UnstorableValue`` naming the step and
    the type: checked here, before the outcome is handed to the store, so a value no store
    can keep fails this step once instead of failing the commit (and re-running the step)."""
    try:
        # A value of exactly the plain declared type (int, str, bool) is its own JSON: what
        # encode_output would return, without the call.
        output = value if type(value) is step.plain_output else step.encode_output(value)
    except Exception as exc:  # the return annotation's serializer refused it
        what = _result_of(step, value)
        raise UnstorableValue(f"the saga log cannot store {what}: {describe_error(exc)}") from None
    # Most values are storable by their shape alone: no need to encode them to tell.
    if not plainly_storable(output):
        try:
            check_value(output, "")
        except UnstorableValue:
            # Named only now: formatting it for every step that returns cost more than the
            # check itself.
            check_value(output, _result_of(step, value))
            raise
    return output


def _result_of(step: Step[Any], value: Any) -> str:
    return f"the result of step {step.name!r} (a {type(value).__name__})"


@coroutine
def _resume(steps: Steps, suspended_on: Any) -> Generator[Any, Any, Any]:
    """``yield from steps`` for an awaitable's iterator that has already yielded
    ``suspended_on`` (see ``call_with_timeout``): hand that to the task first, then forward what
    the task sends or throws (a wake-up, a cancellation) exactly as ``yield from`` does."""
    while True:
        try:
            sent = yield suspended_on
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:
            try:
                suspended_on = steps.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                suspended_on = steps.send(sent)
            except StopIteration as done:
                return done.value


async def call_with_timeout(fn: Action, args: tuple[Any, ...], timeout: float | None) -> Any:
    """``await fn(*args)``, raising TimeoutError after ``timeout`` seconds.

    What ``asyncio.timeout`` does, at a fraction of its cost (it is on every step's hot
    path): one timer handle that cancels this task, turned back into TimeoutError here.
    The timer is armed only once the action first suspends, at the deadline it would have
    had if armed before the call: an action that returns without ever suspending cannot be
    interrupted by a timer (timers only run between loop turns), so it needs none, and
    call_later + cancel + the loop's cleanup of the cancelled handle were ~2 us per step.
    Until then the time is read from ``time.monotonic`` (a C call; ``loop.time()`` is a Python
    method) and a coroutine is driven as is (no ``__await__`` wrapper object): together ~2k
    of the ~7.5k instructions this took per step.
    """
    if timeout is None:
        return await fn(*args)
    began = monotonic()
    awaitable = fn(*args)
    steps: Steps = awaitable if type(awaitable) is CoroutineType else awaitable.__await__()
    returned, suspended_on = first_send(steps)  # run the action up to its first suspension
    if returned:
        return suspended_on  # its value: it never suspended
    return await resume_with_timeout(steps, suspended_on, began, timeout)


async def resume_with_timeout(steps: Steps, suspended_on: Any, began: float, timeout: float) -> Any:
    """The rest of ``call_with_timeout`` once the action has suspended (on ``suspended_on``):
    its timer armed at the deadline it had from ``began`` (a ``time.monotonic()`` read before
    the call). The runner steps a forward step's action to its first suspension itself
    (``runner._returning``), and calls this only when it suspends: a coroutine less for every
    step that never does."""
    loop = asyncio.get_running_loop()
    # What the deadline would have been on the loop's clock had it been read before the call.
    deadline = loop.time() + timeout - (monotonic() - began)
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = loop.call_at(deadline, expire)
    try:
        return await _resume(steps, suspended_on)
    except asyncio.CancelledError:
        if fired:
            fired = False
            if task.uncancel() <= cancelling:
                raise TimeoutError from None
        raise
    finally:
        handle.cancel()
        if fired:  # expired, but the step swallowed the cancellation and returned
            task.uncancel()
