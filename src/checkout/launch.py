"""The ``checkout`` command's entry point, and the stop request its long-running commands share.

A supervisor (systemd, Kubernetes, ``checkout up``, a test) may send SIGTERM at any moment after
it started the process, and importing the command (FastAPI, SQLAlchemy, the engine) alone takes
seconds. Python's default for SIGTERM ends the process on the spot (status -15) wherever it is:
before anything was opened that is merely untidy, but a stop must not depend on the moment it
came. So the entry point installs the handler before importing anything of the checkout, for
the commands that run until they are stopped (``serve``, ``worker``, ``participant``, ``up``); the
others (``migrate``, ``demo``...) keep Python's defaults. From then on SIGTERM and SIGINT only
record the request (:data:`STOP`), and each command acts on it when it is ready to: a worker
that was asked before its start does not start, a server started meanwhile shuts down once
started, and a signal repeated while the process exits changes nothing.

What it cannot cover: the interpreter's own start, before this module runs.

This module imports the standard library only, so that the window before the handler is the
interpreter's start alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The commands that run until stopped; the word that names the command comes first.
LONG_RUNNING = frozenset({"serve", "worker", "participant", "up"})


class StopRequest:
    """SIGTERM or SIGINT received since :meth:`install`, and who to tell."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._listeners: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> Callable[[], None]:
        """Record SIGTERM and SIGINT from now on (main thread only); returns what puts the
        handlers found back."""
        previous = {sig: signal.signal(sig, self._received) for sig in SIGNALS}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _received(self, signum: int, frame: object) -> None:
        self.signal = signum
        for listener in list(self._listeners):
            listener()

    @contextlib.contextmanager
    def listening(self, listener: Callable[[], None]) -> Iterator[None]:
        """Call ``listener`` (in the main thread, from the signal handler) on every request
        while inside, and right away if one came before."""
        self._listeners.append(listener)
        try:
            if self.requested:
                listener()
            yield
        finally:
            self._listeners.remove(listener)

    async def wait(self) -> None:
        """Until a stop is requested (at once if one was), from the event loop's thread."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        # The kernel may hand the signal to any thread (the default executor's, a driver's):
        # Python then runs the handler only once the main thread runs again, and the selector
        # may sleep until its next timer. The wake-up fd makes the signal wake the loop itself
        # (asyncio's add_signal_handler does the same, but its removal, when the loop closes,
        # resets the signal to the default, which kills a process being stopped).
        reader, writer = socket.socketpair()
        previous = -1
        try:
            reader.setblocking(False)
            writer.setblocking(False)
            loop.add_reader(reader, _drain, reader)
            previous = signal.set_wakeup_fd(writer.fileno())
            with self.listening(lambda: loop.call_soon_threadsafe(stopped.set)):
                await stopped.wait()
        finally:
            signal.set_wakeup_fd(previous)
            loop.remove_reader(reader)
            reader.close()
            writer.close()


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        reader.recv(4096)


STOP = StopRequest()


def install_for(argv: list[str]) -> None:
    """Install :data:`STOP` if ``argv`` runs a long-running command."""
    if argv[1:2] and argv[1] in LONG_RUNNING:
        STOP.install()


def main() -> None:
    """The ``checkout`` script (and ``python -m checkout``)."""
    install_for(sys.argv)
    from checkout.cli import main as cli_main

    cli_main()
