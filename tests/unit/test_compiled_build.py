"""The compiled build (README "Compiled build"): which modules are extensions, and the hand-written
``__init__`` of the records that mypyc compiles, which must stay the dataclass's own."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import tomllib
from pathlib import Path

import pytest

import sagaway
from compiled_build import interpreted_only
from sagaway.context import StepContext
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
)

ROOT = Path(__file__).resolve().parents[2]
HAND_WRITTEN = [StepRecord, Event, SagaRecord, Change, NewSaga, StepContext]


def compiled_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    paths = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["compiled"]
    return [path.removeprefix("src/").removesuffix(".py").replace("/", ".") for path in paths]


def test_the_tree_under_test_is_the_one_asked_for() -> None:
    """``make test-compiled`` sets SAGAWAY_COMPILED: every listed module is then an extension.
    Otherwise (``make test``, the editable dev tree) none is, so no stale .so shadows a .py."""
    compiled = bool(os.environ.get("SAGAWAY_COMPILED"))
    for name in compiled_modules():
        path = importlib.import_module(name).__file__ or ""
        assert path.endswith(".py") is not compiled, (name, path)
    if not compiled:
        assert not list(Path(sagaway.__file__).parent.rglob("*.so"))


@interpreted_only  # a compiled __init__ has no signature to inspect (same source)
@pytest.mark.parametrize("record", HAND_WRITTEN, ids=lambda cls: cls.__name__)
def test_a_hand_written_init_takes_the_fields_in_order_with_their_defaults(record: type) -> None:
    params = list(inspect.signature(record.__init__).parameters.values())[1:]
    fields = [field for field in dataclasses.fields(record) if field.init]
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default, field.name
        elif field.default_factory is not dataclasses.MISSING:
            assert param.default is None, field.name  # a fresh one per call, made in __init__
        else:
            assert param.default is inspect.Parameter.empty, field.name


def test_each_record_gets_its_own_lists_and_map() -> None:
    first, second = Change(), Change()
    first.steps.append(StepRecord("a", Phase.FORWARD, StepStatus.RUNNING))
    first.events.append(Event(0.0, EventType.STEP_STARTED))
    assert (second.steps, second.events) == ([], [])
    one, other = (SagaRecord(i, "n", 1, SagaStatus.RUNNING, None, 0.0, 0.0) for i in "ab")
    one.steps[("a", Phase.FORWARD)] = first.steps[0]
    one.history.append(first.events[0])
    assert (other.steps, other.history) == ({}, [])
