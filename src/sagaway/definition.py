"""Declaring sagas: an ordered list of typed async steps, each with an optional compensation.

Definitions are checked when they are declared (duplicate names, a second pivot, compensations
where they can never run) so a malformed saga fails at import time, not in production at 3 a.m.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from sagaway.errors import DecodeError, DefinitionError, InvalidInput
from sagaway.state import JSON, Phase
from sagaway.store._codec import storable_text

T = TypeVar("T")
Action = Callable[..., Awaitable[Any]]
PayloadBuilder = Callable[..., Any]
"""Builds a remote command's payload: ``(ctx, input)`` (or ``(ctx, input, output)`` for a
compensation), sync or async, returning JSON."""

DEFAULT_REPLY_TIMEOUT = 30.0
"""How long a remote step without a ``timeout`` waits for its reply before it is re-sent."""


class StepKind(StrEnum):
    """Where a step stands relative to the point of no return (Garcia-Molina's saga kinds)."""

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"  # once it succeeds the saga only goes forward
    RETRIABLE = "retriable"  # after the pivot: retried until it succeeds, never compensated


class OnUncertain(StrEnum):
    """What recovery does with a step found RUNNING after a crash (its outcome is unknown)."""

    RETRY = "retry"  # run it again with the same idempotency key; the participant dedupes
    COMPENSATE = "compensate"  # give up on it and compensate it with the saga's earlier steps


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter. ``max_attempts`` counts the first try."""

    max_attempts: int = 3
    initial_delay: float = 0.05
    multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.2  # +/- this fraction of the delay, so retries of many sagas spread out

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise DefinitionError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise DefinitionError("RetryPolicy delays must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise DefinitionError("RetryPolicy.jitter must be between 0 and 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        if self.jitter and base:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return base


NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.1, max_delay=5.0)


_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    """A pydantic adapter to encode/decode values of ``annotation``; None for plain JSON.

    One adapter per annotation: the steps of a saga that take its input as the same type share
    it, so a run decodes the input once rather than once per step (it caches by adapter)."""
    if annotation in (inspect.Parameter.empty, Any, None, type(None)):
        return None
    try:
        adapter = _adapters.get(annotation)
    except TypeError:  # an unhashable annotation: its own adapter
        return TypeAdapter(annotation)
    if adapter is None:
        adapter = _adapters[annotation] = TypeAdapter(annotation)
    return adapter


def _model_kept_as_is(annotation: Any) -> type | None:
    """``annotation`` if it is a pydantic model whose validation hands an instance of it back
    as it is (``revalidate_instances`` other than "always"), else None."""
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return None
    if annotation.model_config.get("revalidate_instances", "never") == "always":
        return None
    return annotation


def describe_validation(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic error on one line ("loc: msg; loc: msg"), for logs, records and the CLI."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for error in errors[:limit]:
        loc = ".".join(str(part) for part in error["loc"])
        parts.append(f"{loc}: {error['msg']}" if loc else error["msg"])
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def _type_name(adapter: TypeAdapter[Any]) -> str:
    annotation = getattr(adapter, "_type", None)
    return getattr(annotation, "__name__", None) or repr(annotation)


def _annotations(fn: Action) -> tuple[list[Any], Any]:
    try:
        hints = get_type_hints(fn)
    except Exception as exc:  # unresolvable forward reference: say which function
        raise DefinitionError(f"cannot resolve the type hints of {fn.__qualname__}: {exc}") from exc
    params = list(inspect.signature(fn).parameters.values())
    return [hints.get(p.name, inspect.Parameter.empty) for p in params], hints.get("return")


@dataclass(eq=False)
class Remote:
    """Where a remote step runs: ``participant`` executes ``command`` (routing key
    "participant.command"), and ``compensation`` (a command of the same participant) undoes it.
    The step's function builds the command's payload; ``compensation_payload`` builds the
    compensation's (default: the same payload as the command)."""

    participant: str
    command: str
    compensation: str | None = None
    compensation_payload: PayloadBuilder | None = None

    @property
    def topic(self) -> str:
        return f"{self.participant}.{self.command}"

    @property
    def compensation_topic(self) -> str:
        return f"{self.participant}.{self.compensation}"


_NO_DEFAULT: Any = object()
TimeSpec = float | int | Callable[..., Any]
"""Seconds (or a POSIX time for ``until``), or ``fn(ctx, input)`` returning them (sync)."""


@dataclass(eq=False)
class Wait:
    """A step that waits, parked, for a named ``signal`` from outside (``Saga.wait``) or, with
    ``signal=None``, until a time (``Saga.sleep``). ``timeout`` (seconds) / ``until`` (a POSIX
    time or a datetime): a number or ``fn(ctx, input)``. ``default``: the output a timed-out
    wait takes instead of failing."""

    signal: str | None
    timeout: TimeSpec | None = None
    until: TimeSpec | None = None
    default: Any = _NO_DEFAULT

    @property
    def waiting_for(self) -> str:
        """What the parked saga's row says it waits for."""
        return "timer" if self.signal is None else f"signal:{self.signal}"

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


def _check_time(label: str, value: TimeSpec | None) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise DefinitionError(f"{label} must be seconds >= 0 or a function (ctx, input)")


class Step(Generic[T]):
    """One step of a saga. Returned by ``@saga.step`` so ``@step.compensation`` can follow.

    A plain class, not a dataclass: mypyc compiles no generic dataclass, and the engine reads
    a step's attributes on every transition (DEVELOPERS.md "The compiled build")."""

    __slots__ = (
        "action",
        "compensation_retry",
        "compensation_timeout",
        "index",
        "input_adapter",
        "key_suffix",
        "kind",
        "model_output",
        "name",
        "on_uncertain",
        "output_adapter",
        "plain_output",
        "remote",
        "reply_type",
        "retry",
        "saga",
        "timeout",
        "undo",
        "wait",
    )

    def __init__(
        self,
        saga: Saga,
        name: str,
        action: Action,
        index: int,
        kind: StepKind = StepKind.COMPENSATABLE,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float | None = None,
        on_uncertain: OnUncertain = OnUncertain.RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        compensation_timeout: float | None = None,
        undo: Action | None = None,
        input_adapter: TypeAdapter[Any] | None = None,
        output_adapter: TypeAdapter[Any] | None = None,
        remote: Remote | None = None,
        reply_type: Any = None,
        wait: Wait | None = None,
    ) -> None:
        self.saga = saga
        self.name = name
        self.action = action
        self.index = index
        self.kind = kind
        self.retry = retry
        self.timeout = timeout
        self.on_uncertain = on_uncertain
        self.compensation_retry = compensation_retry
        self.compensation_timeout = compensation_timeout
        self.undo = undo
        # Set for a step run by another service (``Saga.remote``): ``action`` builds the payload.
        self.remote = remote
        self.reply_type = reply_type
        # Set for a step that waits for a signal or a time (``Saga.wait``, ``Saga.sleep``).
        self.wait = wait
        if wait is None:
            params, returns = _annotations(action)
            if len(params) != 2:
                raise DefinitionError(
                    f"step {name!r} must take (ctx, input); it takes {len(params)} parameters"
                )
            if remote is None and not inspect.iscoroutinefunction(action):
                raise DefinitionError(f"step {name!r} must be an async function")
            input_type = params[1]
        else:
            # A wait parks: its action is the library's, never called (compiled, it has no
            # signature to inspect); its input is the saga's (_add_wait).
            input_type = returns = None
        self.input_adapter: TypeAdapter[Any] | None = _adapter(input_type)
        # A remote step's function returns the command's payload: its output is the reply's.
        output = reply_type if remote is not None or wait is not None else returns
        self.output_adapter: TypeAdapter[Any] | None = _adapter(output)
        # ``int``, ``str`` or ``bool`` when that is the declared output: a value of exactly that
        # type is its own JSON, so encode_output hands it back without the serializer (on every
        # step's hot path: the serializer call was ~7% of the engine's CPU on the memory store).
        self.plain_output: type | None = output if output in (int, str, bool) else None
        # The declared output when it is a model a value of exactly that class passes
        # validation as it is (see encode_output); else None.
        self.model_output: type | None = _model_kept_as_is(output)
        # ":{name}:{phase}" per phase, so building an idempotency key on the hot path is one
        # concatenation instead of a format of the name and a StrEnum.
        self.key_suffix: dict[Phase, str] = {phase: f":{name}:{phase}" for phase in Phase}

    def __repr__(self) -> str:
        return (
            f"Step(saga={self.saga!r}, name={self.name!r}, action={self.action!r}, "
            f"index={self.index!r}, kind={self.kind!r}, retry={self.retry!r}, "
            f"timeout={self.timeout!r}, on_uncertain={self.on_uncertain!r}, "
            f"compensation_retry={self.compensation_retry!r}, "
            f"compensation_timeout={self.compensation_timeout!r}, undo={self.undo!r}, "
            f"remote={self.remote!r}, wait={self.wait!r})"
        )

    @property
    def has_undo(self) -> bool:
        """Whether the step has a compensation (a function, or a remote command)."""
        return self.undo is not None or (
            self.remote is not None and self.remote.compensation is not None
        )

    def compensation_payload(self, fn: PayloadBuilder) -> PayloadBuilder:
        """Register ``fn(ctx, input, output)`` (sync or async) as the builder of this remote
        step's compensation payload (decorator); by default it is the command's payload."""
        if self.remote is None or self.remote.compensation is None:
            raise DefinitionError(
                f"step {self.name!r} has no remote compensation: declare it with "
                "saga.remote(..., compensation='<command>')"
            )
        if len(inspect.signature(fn).parameters) != 3:
            raise DefinitionError(
                f"compensation payload of {self.name!r} must take (ctx, input, output)"
            )
        self.remote.compensation_payload = fn
        return fn

    def compensation(self, fn: Action) -> Action:
        """Register ``fn(ctx, input, output)`` as this step's compensation (decorator)."""
        if self.remote is not None:
            raise DefinitionError(
                f"step {self.name!r} is remote: its compensation is a command of its "
                "participant (saga.remote(..., compensation='<command>'))"
            )
        if self.kind is not StepKind.COMPENSATABLE:
            raise DefinitionError(
                f"step {self.name!r} is {self.kind}: it is never compensated, so it cannot "
                "have a compensation"
            )
        if self.undo is not None:
            raise DefinitionError(f"step {self.name!r} already has a compensation")
        if not inspect.iscoroutinefunction(fn):
            raise DefinitionError(f"compensation of {self.name!r} must be an async function")
        if len(inspect.signature(fn).parameters) != 3:
            raise DefinitionError(f"compensation of {self.name!r} must take (ctx, input, output)")
        self.undo = fn
        return fn

    # The three below call pydantic-core's validator/serializer directly: the same call with
    # the same defaults as TypeAdapter.dump_python/validate_python, minus their Python wrapper
    # (a frame and a dozen keyword arguments each), which cost ~1 us per call on every step.

    # A value that does not fit the declared type is a programming error: DecodeError, which
    # the runner never retries, with a one-line message instead of pydantic's multi-line dump.

    def encode_output(self, value: Any) -> JSON:
        adapter = self.output_adapter
        if adapter is None or type(value) is self.plain_output:
            return value
        if type(value) is self.model_output:
            # An instance of exactly the declared model: what the call below returns, or, when
            # it raises, what the fallback does (validating it hands back the very instance,
            # which is then serialized as here, warnings included). warnings="error" costs the
            # serializer ~1-2 us a model (measured on the checkout's step results).
            return adapter.serializer.to_python(value, mode="json")
        try:
            return adapter.serializer.to_python(value, mode="json", warnings="error")
        except PydanticSerializationError:
            # Not an instance of the declared type: accept what validates into it (a dict for
            # a model, say), refuse the rest.
            try:
                typed = adapter.validator.validate_python(value)
            except ValidationError as exc:
                raise DecodeError(
                    f"step {self.name!r} returned a {type(value).__name__}, not a "
                    f"{_type_name(adapter)}: {describe_validation(exc)}"
                ) from None
            return adapter.serializer.to_python(typed, mode="json")

    def decode_output(self, data: JSON) -> Any:
        if self.output_adapter is None or data is None:
            return data
        try:
            return self.output_adapter.validator.validate_python(data)
        except ValidationError as exc:
            raise DecodeError(
                f"the recorded output of step {self.name!r} is not a "
                f"{_type_name(self.output_adapter)}: {describe_validation(exc)}"
            ) from None

    def decode_input(self, data: JSON) -> Any:
        if self.input_adapter is None:
            return data
        try:
            return self.input_adapter.validator.validate_python(data)
        except ValidationError as exc:
            raise DecodeError(
                f"the saga's input is not the {_type_name(self.input_adapter)} step "
                f"{self.name!r} takes: {describe_validation(exc)}"
            ) from None

    def key(self, saga_id: str, phase: Phase) -> str:
        """The idempotency key participants dedupe on: stable across retries and restarts."""
        return saga_id + self.key_suffix[phase]


# Every saga declared in this process, by (name, version): what an Engine built without
# ``sagas=[...]`` knows and resumes. The latest declaration of a key wins (a module imported
# again, a test declaring its own "checkout" v1): an engine resumes with the one in force.
_declared: dict[tuple[str, int], Saga] = {}


def declared_sagas() -> dict[tuple[str, int], Saga]:
    """The sagas declared in this process (with at least one step), by (name, version)."""
    return {key: saga for key, saga in _declared.items() if saga.steps}


class Saga:
    """A named, versioned saga definition. Bump the version when steps change incompatibly:
    instances are resumed with the exact definition (name, version) that started them.

    Declaring one makes it known to every ``Engine`` of the process that was not given an
    explicit ``sagas=[...]`` list, so such an engine resumes its instances after a crash."""

    def __init__(self, name: str, version: int = 1, *, deadline: float | None = None) -> None:
        if not name:
            raise DefinitionError("a saga needs a name")
        if not storable_text(name):
            raise DefinitionError(f"saga name {name!r} has a NUL or a lone surrogate")
        if deadline is not None and deadline <= 0:
            raise DefinitionError("a saga deadline must be positive seconds")
        self.name = name
        self.version = version
        self.deadline = deadline
        self.steps: list[Step[Any]] = []
        self._by_name: dict[str, Step[Any]] = {}
        _declared[self.key] = self

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={[s.name for s in self.steps]})"

    def step(
        self,
        fn: Action | None = None,
        *,
        name: str | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        on_uncertain: OnUncertain | str = OnUncertain.RETRY,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
    ) -> Any:
        """Declare the next step: ``@saga.step`` or ``@saga.step(retry=..., timeout=...)``."""

        def register(action: Action) -> Step[Any]:
            return self._add(
                Step(
                    saga=self,
                    name=name or action.__name__,
                    action=action,
                    index=len(self.steps),
                    kind=StepKind(kind),
                    retry=retry or DEFAULT_RETRY,
                    timeout=timeout,
                    on_uncertain=OnUncertain(on_uncertain),
                    compensation_retry=compensation_retry or DEFAULT_COMPENSATION_RETRY,
                    compensation_timeout=compensation_timeout,
                )
            )

        return register if fn is None else register(fn)

    def remote(
        self,
        participant: str,
        command: str,
        *,
        reply: Any = None,
        compensation: str | None = None,
        name: str | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        on_uncertain: OnUncertain | str = OnUncertain.RETRY,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
    ) -> Callable[[PayloadBuilder], Step[Any]]:
        """Declare the next step as a command ``participant`` runs (``"inventory"``,
        ``"reserve"``): the decorated ``fn(ctx, input)`` (sync or async) builds the command's
        payload; the participant's reply output, decoded as ``reply``, is the step's output.
        ``compensation`` names the participant's command that undoes it (by default with the
        same payload; ``@step.compensation_payload`` builds another). The command carries the
        step's idempotency key, so re-sending it (a timeout, a crash) never repeats its effect.
        ``timeout``: how long one attempt waits for the reply (default
        ``DEFAULT_REPLY_TIMEOUT`` on a message transport)."""
        for label, value in (("participant", participant), ("command", command)):
            if not value or not storable_text(value) or "." in value:
                raise DefinitionError(f"remote step: bad {label} name {value!r}")
        if compensation is not None and StepKind(kind) is not StepKind.COMPENSATABLE:
            raise DefinitionError(
                f"a {StepKind(kind)} step is never compensated: it cannot have a compensation"
            )

        def register(builder: PayloadBuilder) -> Step[Any]:
            return self._add(
                Step(
                    saga=self,
                    name=name or builder.__name__,
                    action=builder,
                    index=len(self.steps),
                    kind=StepKind(kind),
                    retry=retry or DEFAULT_RETRY,
                    timeout=timeout,
                    on_uncertain=OnUncertain(on_uncertain),
                    compensation_retry=compensation_retry or DEFAULT_COMPENSATION_RETRY,
                    compensation_timeout=compensation_timeout,
                    remote=Remote(participant, command, compensation),
                    reply_type=reply,
                )
            )

        return register

    def wait(
        self,
        signal: str,
        *,
        timeout: TimeSpec,
        reply: Any = None,
        default: Any = _NO_DEFAULT,
        name: str | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
    ) -> Step[Any]:
        """Declare the next step as a wait for ``signal`` from outside (a person confirming a
        payment, a webhook), delivered with ``Engine.signal``: its payload, decoded as
        ``reply``, is the step's output. Parked meanwhile: no task, no memory, no lease.

        ``timeout``: seconds, or ``fn(ctx, input)`` returning them. Past it, the step fails
        like a refused command (the saga compensates; past the pivot it stops FAILED), or, with
        ``default``, succeeds with that output. A signal delivered with ``error`` fails it the
        same way. The step's name defaults to the signal's."""
        if not signal or not storable_text(signal) or any(c in signal for c in " \n\t"):
            raise DefinitionError(f"wait: bad signal name {signal!r}")
        if timeout is None:
            raise DefinitionError(f"wait for {signal!r}: a timeout is required")
        _check_time(f"wait for {signal!r}: timeout", timeout)
        return self._add_wait(
            Wait(signal, timeout=timeout, default=default), name or signal, kind, reply
        )

    def sleep(
        self,
        name: str,
        *,
        seconds: TimeSpec | None = None,
        until: TimeSpec | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
    ) -> Step[Any]:
        """Declare the next step as a durable sleep: ``seconds`` from when it starts, or
        ``until`` a POSIX time or an aware datetime (either may be ``fn(ctx, input)``). The
        saga is parked meanwhile (``waiting_for = "timer"``) and resumes on whichever engine
        runs when it is due, even after restarts. Its output is None."""
        if (seconds is None) == (until is None):
            raise DefinitionError(f"sleep {name!r}: give seconds or until (one of them)")
        _check_time(f"sleep {name!r}: seconds", seconds)
        if until is not None and not callable(until):
            _check_time(f"sleep {name!r}: until", until)
        return self._add_wait(Wait(None, timeout=seconds, until=until), name, kind, None)

    def _add_wait(self, wait: Wait, name: str, kind: StepKind | str, reply: Any) -> Step[Any]:
        async def waits(ctx: Any, input: Any) -> Any:  # never called: the step parks
            raise AssertionError("a wait step has no action")

        step: Step[Any] = Step(
            saga=self,
            name=name,
            action=waits,
            index=len(self.steps),
            kind=StepKind(kind),
            retry=NO_RETRY,
            wait=wait,
            reply_type=reply,
        )
        # A timeout function gets the saga's input as its first step declares it.
        step.input_adapter = self.steps[0].input_adapter if self.steps else None
        if wait.has_default:
            try:
                step.encode_output(wait.default)
            except DecodeError as exc:
                raise DefinitionError(f"wait {name!r}: bad default: {exc}") from None
        return self._add(step)

    def _add(self, step: Step[Any]) -> Step[Any]:
        if not storable_text(step.name):
            raise DefinitionError(f"step name {step.name!r} has a NUL or a lone surrogate")
        if step.name in self._by_name:
            raise DefinitionError(f"saga {self.name!r} already has a step named {step.name!r}")
        if step.timeout is not None and step.timeout <= 0:
            raise DefinitionError(f"step {step.name!r}: timeout must be positive seconds")
        past_pivot = any(s.kind is not StepKind.COMPENSATABLE for s in self.steps)
        if step.kind is StepKind.PIVOT and past_pivot:
            raise DefinitionError(
                f"saga {self.name!r} cannot have step {step.name!r} as a second pivot "
                "(or a pivot after a retriable step)"
            )
        if step.kind is StepKind.COMPENSATABLE and past_pivot:
            raise DefinitionError(
                f"step {step.name!r} comes after the pivot: it must be kind='retriable'"
            )
        self.steps.append(step)
        self._by_name[step.name] = step
        return step

    def get_step(self, name: str) -> Step[Any]:
        try:
            return self._by_name[name]
        except KeyError:
            raise DefinitionError(f"saga {self.name!r} has no step named {name!r}") from None

    def encode_input(self, value: Any) -> JSON:
        if not self.steps:
            raise DefinitionError(f"saga {self.name!r} has no steps")
        adapter = self.steps[0].input_adapter
        if adapter is None:
            return value
        # Validate everything (an instance of the type passes as is): bad input fails here, at
        # start, instead of in the first step after its retries.
        try:
            typed = adapter.validator.validate_python(value)
        except ValidationError as exc:
            raise InvalidInput(
                f"saga {self.name!r} takes a {_type_name(adapter)}, got a "
                f"{type(value).__name__}: {describe_validation(exc)}"
            ) from None
        return adapter.serializer.to_python(typed, mode="json")  # dump_python minus its wrapper


def decode_results(saga: Saga, outputs: Mapping[str, JSON]) -> dict[str, Any]:
    return {name: saga.get_step(name).decode_output(data) for name, data in outputs.items()}
