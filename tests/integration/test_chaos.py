"""The short CI version of ``benchmarks/chaos.py`` (issue 8, "keep it broken-proof"): orders
against the scale-out topology on PostgreSQL (an API process and two workers) while a session
kill (``pg_terminate_backend`` of every service connection), a worker SIGKILL and an API SIGKILL
are injected; then every invariant must hold: all sagas terminal, one order per Idempotency-Key,
no effect applied twice, money and stock conserved, no 5xx after a durable write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import POSTGRES_URL, postgres_check, require_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHAOS = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos.py"


def test_chaos_short_run_keeps_every_invariant() -> None:
    require_server("postgresql", postgres_check)
    run = subprocess.run(
        [
            sys.executable,
            str(CHAOS),
            "--n",
            "40",
            "--concurrency",
            "8",
            "--faults",
            "terminate,kill-worker,kill-api",
            "--server",
            POSTGRES_URL,
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    lines = run.stdout.strip().splitlines()
    assert lines, run.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["faults"] == 3, run.stdout
    assert result["invariants"] == dict.fromkeys(result["invariants"], True), run.stdout
    assert result["ok"], run.stdout
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
