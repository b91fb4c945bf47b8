"""Crash tests with real processes: SIGKILL a worker after each durable transition (and inside
each action/compensation, after its effect and before its outcome is recorded), restart it on
the same SQLite file, and check the saga finished or compensated with every effect applied
exactly once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("crash_worker.py")
pytestmark = pytest.mark.slow

SUCCESS_EFFECTS = {"reserve": 1, "pay": 1, "ship": 1}
COMPENSATED_EFFECTS = {"reserve": 1, "pay": 1, "refund": 1, "release": 1}

# (variant, kill after N durable transitions, kill inside this action/compensation)
SCENARIOS = [
    *[("ok", n, "") for n in range(3)],  # 0: after create; 1, 2: after steps 1, 2
    *[("ok", -1, what) for what in ("reserve", "pay", "ship")],
    *[("fail", n, "") for n in range(5)],  # 3: step 3 failed; 4: refund done
    *[("fail", -1, what) for what in ("reserve", "pay", "refund", "release")],
]


def _run(mode: str, tmp_path: Path, variant: str, kill_after: int, kill_in: str) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            mode,
            str(tmp_path / "log.db"),
            str(tmp_path / "effects.db"),
            variant,
            str(kill_after),
            kill_in,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout.strip() + proc.stderr[-2000:]


@pytest.mark.parametrize(("variant", "kill_after", "kill_in"), SCENARIOS)
def test_killed_worker_resumes_and_applies_each_effect_once(
    tmp_path: Path, variant: str, kill_after: int, kill_in: str
) -> None:
    code, output = _run("start", tmp_path, variant, kill_after, kill_in)
    assert code == -signal.SIGKILL, f"worker was not killed where intended: {code} {output}"

    code, output = _run("resume", tmp_path, variant, -1, "")
    assert code == 0, output
    expected_status = "SUCCEEDED" if variant == "ok" else "COMPENSATED"
    assert output.splitlines()[0] == expected_status, output

    effects = sqlite3.connect(tmp_path / "effects.db")
    applied = Counter(what for (what,) in effects.execute("SELECT what FROM effects"))
    assert dict(applied) == (SUCCESS_EFFECTS if variant == "ok" else COMPENSATED_EFFECTS)
    if kill_in:  # the interrupted call ran again after the restart, and was deduplicated
        calls = Counter(what for (what,) in effects.execute("SELECT what FROM calls"))
        assert calls[kill_in] == 2

    log = sqlite3.connect(tmp_path / "log.db")
    statuses = [s for (s,) in log.execute("SELECT status FROM sagaway_instances")]
    assert statuses == [expected_status]
