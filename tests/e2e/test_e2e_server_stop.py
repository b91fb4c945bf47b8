"""SIGTERM stops a ``checkout serve`` process whatever moment of its start-up it lands in.

``tests/startup_gates.py`` holds the start-up at one moment (``GATE <moment>`` on stdout) until a
line arrives on stdin: the test sends SIGTERM there, releases the gate and waits for the process
to exit with status 0. A signal the process lost would leave it serving: the wait's bound (the
test's own timeout) turns that hang into a failure, it is not a timing assumption.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

GATED = [sys.executable, str(Path(__file__).parents[1] / "startup_gates.py")]
SERVE = ["serve", "--host", "127.0.0.1", "--port", "0"]
# Seconds: far above a start and a stop on a loaded machine; only a lost signal reaches it.
HANG_BOUND = 90


class Starting:
    """A ``checkout serve`` subprocess on SQLite, its output read line by line."""

    def __init__(self, db_path: Path, gate: str = "") -> None:
        url = f"sqlite:///{db_path}"
        env = {
            **os.environ,
            "SAGAWAY_DATABASE_URL": url,
            "SAGAWAY_STORE_URL": url,
            "SAGAWAY_DEMO": "true",
            "PYTHONUNBUFFERED": "1",
            "START_GATE": gate,
        }
        self.proc = subprocess.Popen(
            [*GATED, *SERVE],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> None:
        while True:
            try:
                line = self.lines.get(timeout=HANG_BOUND)
            except queue.Empty:
                pytest.fail(f"no {text!r} line: {''.join(self.output)}")
            assert line is not None, f"exited before {text!r}: {''.join(self.output)}"
            if text in line:
                return

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def stopped_status(self) -> int:
        try:
            return self.proc.wait(timeout=HANG_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGTERM: {''.join(self.output)}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("moment", ["loop", "lifespan", "started"])
def test_sigterm_at_each_moment_of_the_start_stops_the_server(tmp_path: Path, moment: str) -> None:
    server = Starting(tmp_path / "sagaway.db", gate=moment)
    try:
        server.wait_for(f"GATE {moment}")
        server.proc.send_signal(signal.SIGTERM)
        server.release()
        assert server.stopped_status() == 0, "".join(server.output)
    finally:
        server.kill()
    assert "Traceback" not in "".join(server.output)


@pytest.mark.timeout(600)  # three starts on a loaded machine
def test_sigterm_as_soon_as_the_ready_line_is_read_stops_the_server(tmp_path: Path) -> None:
    """No gate: the signal lands wherever the start-up happens to be, once per round."""
    for round_ in range(3):
        server = Starting(tmp_path / f"sagaway-{round_}.db")
        try:
            server.wait_for("serving on http://")
            server.proc.send_signal(signal.SIGTERM)
            assert server.stopped_status() == 0, "".join(server.output)
        finally:
            server.kill()
