"""SIGTERM stops ``checkout serve``, ``checkout worker`` and ``checkout participant`` with status 0
whatever moment of their start-up it lands in, and closes what they opened.

``tests/startup_gates.py`` starts the command through the ``checkout`` script's entry point and
holds it at one moment (``GATE <moment>`` on stdout) until a line arrives on stdin: the test
sends SIGTERM there, releases the gate and waits for the process to exit. A signal the process
lost would leave it running: the wait's bound (far above a start and a stop) turns that hang into
a failure, it is not a timing assumption. A signal nobody handled yet ends it with -15.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ports

GATED = [sys.executable, str(Path(__file__).parents[1] / "startup_gates.py")]
SERVE = ["serve", "--host", "127.0.0.1", "--port", "0"]
WORKER = ["worker"]
# Seconds: far above a start and a stop on a loaded machine; only a lost signal reaches it.
HANG_BOUND = 90


class Starting:
    """A ``checkout`` subprocess on SQLite, its output read line by line."""

    def __init__(self, db_path: Path, args: list[str], gate: str = "") -> None:
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
            [*GATED, *args],
            env=env,
            cwd=db_path.parent,
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

    def signal_at(self, moment: str) -> None:
        self.wait_for(f"GATE {moment}")
        self.proc.send_signal(signal.SIGTERM)
        self.release()

    def stopped_status(self) -> int:
        try:
            return self.proc.wait(timeout=HANG_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after SIGTERM: {''.join(self.output)}")

    def assert_stopped_cleanly(self) -> None:
        status = self.stopped_status()
        while self.lines.get(timeout=HANG_BOUND) is not None:  # the pump read everything
            pass
        output = "".join(self.output)
        assert status == 0, output
        assert "Traceback" not in output
        opened = output.count("STARTUP services opened")
        assert output.count("STARTUP services closed") == opened, output

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("moment", ["imports", "loop", "lifespan", "started"])
def test_sigterm_at_each_moment_of_the_start_stops_the_server(tmp_path: Path, moment: str) -> None:
    server = Starting(tmp_path / "sagaway.db", SERVE, gate=moment)
    try:
        server.signal_at(moment)
        server.assert_stopped_cleanly()
    finally:
        server.kill()


@pytest.mark.timeout(600)  # three starts on a loaded machine
def test_sigterm_as_soon_as_the_ready_line_is_read_stops_the_server(tmp_path: Path) -> None:
    """No gate: the signal lands wherever the start-up happens to be, once per round."""
    for round_ in range(3):
        server = Starting(tmp_path / f"sagaway-{round_}.db", SERVE)
        try:
            server.wait_for("serving on http://")
            server.proc.send_signal(signal.SIGTERM)
            server.assert_stopped_cleanly()
        finally:
            server.kill()


@pytest.mark.parametrize("moment", ["imports", "loop", "lifespan", "started"])
def test_sigterm_at_each_moment_of_the_start_stops_the_worker(tmp_path: Path, moment: str) -> None:
    worker = Starting(tmp_path / "sagaway.db", WORKER, gate=moment)
    try:
        worker.signal_at(moment)
        worker.assert_stopped_cleanly()
    finally:
        worker.kill()
    if moment in ("lifespan", "started"):  # it had started opening: it closed it all again
        assert "STARTUP services closed" in "".join(worker.output)


def test_a_second_sigterm_while_the_worker_exits_does_not_kill_it(tmp_path: Path) -> None:
    """A supervisor or a user may repeat the signal: the stop under way still ends with 0."""
    worker = Starting(tmp_path / "sagaway.db", WORKER, gate="exit")
    try:
        worker.wait_for("running sagas")
        worker.proc.send_signal(signal.SIGTERM)
        worker.signal_at("exit")
        worker.assert_stopped_cleanly()
    finally:
        worker.kill()


def test_sigterm_while_a_participant_imports_stops_it(tmp_path: Path) -> None:
    """``checkout participant`` shares the server's start after its imports (``run_server``)."""
    args = ["participant", "payment", "--port", "0"]
    service = Starting(tmp_path / "payment.db", args, gate="imports")
    try:
        service.signal_at("imports")
        service.assert_stopped_cleanly()
    finally:
        service.kill()


def test_a_command_run_in_process_leaves_its_callers_signal_handling(tmp_path: Path) -> None:
    """The handlers a command installs are put back when it returns (here a test's CliRunner:
    its process must still stop on SIGTERM and Ctrl-C)."""
    from typer.testing import CliRunner

    from checkout.cli import app

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(app, ["worker"], env={"SAGAWAY_STORE_URL": "nope://x"})
    assert result.exit_code == 2, result.output
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_while_up_imports_starts_nothing(tmp_path: Path) -> None:
    """``checkout up`` asked to stop before it started any service exits 0 and starts none."""
    base = ports.free_ports_in_a_row(4)
    up = Starting(tmp_path / "sagaway.db", ["up", "--base-port", str(base)], gate="imports")
    try:
        up.signal_at("imports")
        up.assert_stopped_cleanly()
        assert "stopped before starting" in "".join(up.output)
        for port in range(base, base + 4):
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"something listens on {port}"
    finally:
        up.kill()
