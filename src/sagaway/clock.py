"""Time as the engine sees it. Injected so tests can move time without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from mypy_extensions import mypyc_attr


class Clock(Protocol):
    def now(self) -> float:
        """POSIX seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...


# Tests subclass it to move time (a compiled class refuses Python subclasses unless it says so).
@mypyc_attr(allow_interpreted_subclasses=True)
class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
