"""Shared by every suite. Puts ``tests/`` on ``sys.path`` so modules such as ``servers`` (the
real-server skip-or-fail helper) import the same way from unit, contract and integration tests,
whatever pytest's import mode."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
