"""Whether the suite runs against the compiled build (``make test-compiled``, README "Compiled
build"): a few tests reach into the engine in ways a compiled class refuses."""

from __future__ import annotations

import pytest

import sagaway.engine

COMPILED = not (sagaway.engine.__file__ or "").endswith(".py")

interpreted_only = pytest.mark.skipif(
    COMPILED, reason="the compiled build refuses or hides what it does (see the comment)"
)
