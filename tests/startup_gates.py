"""``checkout serve`` held at one moment of its start-up, so a test can signal it exactly there.

A SIGTERM that lands between two start-up steps is a race a test cannot win by timing. This
launcher stops the start-up at the moment named by ``START_GATE``, prints ``GATE <moment>`` and
carries on only when a line arrives on stdin; the test signals the process between the two:

* ``loop``: the ready line is printed, the event loop is not created yet (uvicorn's own signal
  handlers are not installed);
* ``lifespan``: inside the app's lifespan, before the database, the engine and its background
  tasks are opened;
* ``started``: the lifespan has started everything (the engine runs), the server is about to
  accept connections.

    START_GATE=lifespan python startup_gates.py serve --host 127.0.0.1 --port 0
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import checkout.api.app
import checkout.cli
from checkout.bootstrap import Services, bootstrap

GATE = os.environ.get("START_GATE", "")


def hold(moment: str) -> None:
    print(f"GATE {moment}", flush=True)
    sys.stdin.readline()  # a signal arriving meanwhile runs its handler, then the read resumes


real_loop_factory = checkout.cli.fast_loop_factory


def gated_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    factory = real_loop_factory()
    if GATE == "loop":
        hold("loop")
    return factory


@contextlib.asynccontextmanager
async def gated_bootstrap(*args: Any, **kwargs: Any) -> AsyncIterator[Services]:
    if GATE == "lifespan":
        await asyncio.to_thread(hold, "lifespan")
    async with bootstrap(*args, **kwargs) as services:
        if GATE == "started":
            await asyncio.to_thread(hold, "started")
        yield services


checkout.cli.fast_loop_factory = gated_loop_factory
checkout.api.app.bootstrap = gated_bootstrap  # type: ignore[assignment]

if __name__ == "__main__":
    checkout.cli.main()
