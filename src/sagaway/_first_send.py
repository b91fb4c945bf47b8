"""Running a step's coroutine up to its first suspension. Interpreted on purpose: kept out of
pyproject.toml's ``compiled`` list.

A coroutine that returns without ever suspending (most actions on a local store) hands its value
over in a StopIteration. Caught in a module mypyc compiles, that exception gets a traceback entry
built for it (a code and a frame object: ~3,000 instructions with the catch, a third of a step's
own cost in the compiled build); the interpreter catches it for half that.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


def first_send(steps: Coroutine[Any, Any, Any] | Generator[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``steps`` until it first suspends: ``(False, what it suspended on)``; or, when it
    returned first, ``(True, its value)``. What it raises propagates."""
    try:
        return False, steps.send(None)
    except StopIteration as done:
        return True, done.value
