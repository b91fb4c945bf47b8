"""``checkout`` (``serve``, ``worker``, ``participant``) held at one moment of its start-up, so a
test can signal it exactly there.

A SIGTERM that lands between two start-up steps is a race a test cannot win by timing. This
launcher starts the command the way the ``checkout`` script does (the entry point named in
``pyproject.toml``), stops it at the moment named by ``START_GATE``, prints ``GATE <moment>`` and
carries on only when a line arrives on stdin; the test signals the process between the two:

* ``imports``: the entry point is running, ``checkout.cli`` is about to be imported (seconds of
  imports: FastAPI, SQLAlchemy, the engine...);
* ``loop``: the settings are read, the event loop is not created yet (for ``serve``: the ready
  line is printed, uvicorn's own signal handlers are not installed);
* ``lifespan``: inside the event loop, before the database, the engine and its background tasks
  are opened (``serve``: in the app's lifespan; ``worker``: before its start);
* ``started``: everything is started (the engine runs), the server is about to accept
  connections / the worker about to print that it runs;
* ``exit``: the command has returned and the interpreter is exiting (``atexit``).

Whatever opens the database and the engine prints ``STARTUP services opened`` and, once they
are closed again, ``STARTUP services closed``.

    START_GATE=lifespan python startup_gates.py serve --host 127.0.0.1 --port 0
    START_GATE=imports python startup_gates.py worker
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tomllib
import types
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

GATE = os.environ.get("START_GATE", "")
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def hold(moment: str) -> None:
    print(f"GATE {moment}", flush=True)
    sys.stdin.readline()  # a signal arriving meanwhile runs its handler, then the read resumes


def gated_bootstrap(real: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.asynccontextmanager
    async def bootstrap(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if GATE == "lifespan":
            await asyncio.to_thread(hold, "lifespan")
        async with real(*args, **kwargs) as services:
            print("STARTUP services opened", flush=True)
            if GATE == "started":
                await asyncio.to_thread(hold, "started")
            yield services
        print("STARTUP services closed", flush=True)

    return bootstrap


def gate_cli(cli: types.ModuleType) -> None:
    """The gates after the imports, patched into ``checkout.cli`` as soon as it is loaded."""
    import checkout.api.app

    checkout.api.app.bootstrap = gated_bootstrap(checkout.api.app.bootstrap)  # type: ignore[assignment]
    cli.bootstrap = gated_bootstrap(cli.bootstrap)  # the worker's
    real_loop_factory, real_guard = cli.fast_loop_factory, cli._guard

    def loop_factory() -> Any:  # serve's event loop
        factory = real_loop_factory()
        if GATE == "loop":
            hold("loop")
        return factory

    def guard(main: Any) -> Any:  # the worker's event loop
        if GATE == "loop":
            hold("loop")
        return real_guard(main)

    cli.fast_loop_factory, cli._guard = loop_factory, guard


class GateOnImport(importlib.abc.MetaPathFinder):
    """Holds the import of ``checkout.cli`` at the ``imports`` gate, then loads it as usual and
    patches the later gates into it."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "checkout.cli":
            return None
        sys.meta_path.remove(self)
        if GATE == "imports":
            hold("imports")
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.loader is not None
        load = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            load(module)
            gate_cli(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def entry_point() -> Callable[[], None]:
    """The function the ``checkout`` script calls (imported: only its own module loads)."""
    target = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["checkout"]
    module, _, function = target.partition(":")
    main: Callable[[], None] = getattr(importlib.import_module(module), function)
    return main


if __name__ == "__main__":
    sys.meta_path.insert(0, GateOnImport())
    if GATE == "exit":
        atexit.register(hold, "exit")
    sys.argv[0] = "checkout"
    entry_point()()
