"""The ``checkout`` CLI: demo, migrate, worker, and bad input -> non-zero exit with a message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ports
from checkout.cli import app

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    return {"SAGAWAY_DATABASE_URL": url, "SAGAWAY_STORE_URL": url}


def test_demo_runs_the_four_scenarios(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in (
        "happy path",
        "Insufficient inventory",
        "Insufficient funds",
        "Invalid shipping",
        "user_1 balance 1000.00 -> 900.00; product_1 stock 100 -> 98",
        "conserved",
    ):
        assert text in result.output
    assert (tmp_path / "demo.db").exists()


def test_migrate_creates_both_schemas(tmp_path: Path) -> None:
    result = runner.invoke(app, ["migrate"], env=_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    again = runner.invoke(app, ["migrate"], env=_env(tmp_path))
    assert again.exit_code == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["migrate"], {"SAGAWAY_DATABASE_URL": "mysql://db/x"}, "unsupported database URL"),
        (["worker"], {"SAGAWAY_STORE_URL": "nope://x"}, "unsupported saga store URL"),
        (["worker"], {"SAGAWAY_LEASE_SECONDS": "soon"}, "SAGAWAY_LEASE_SECONDS"),
        (["serve", "--port", "70000"], {}, "--port"),
        (["bogus"], {}, "No such command"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code != 0
    assert message in result.output


def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)], env=_env(tmp_path))
    assert result.exit_code == 1
    assert "cannot listen" in result.output


def test_worker_runs_until_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "checkout.cli", "worker"],
        env={**os.environ, **_env(tmp_path), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while "running sagas" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "worker exited early"
        assert "running sagas" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_serves_metrics_on_its_port(tmp_path: Path) -> None:
    import httpx

    port = ports.free_port()
    env = {**os.environ, **_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    env["SAGAWAY_METRICS_PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "checkout.cli", "worker"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "running sagas" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1] or proc.poll() is None, f"worker exited early: {lines}"
        assert f"metrics at http://127.0.0.1:{port}/metrics" in "".join(lines)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "# TYPE sagaway_sagas_in_flight gauge" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_otel_console_exporter_prints_saga_and_step_spans(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "checkout-test"}
    result = subprocess.run(
        [sys.executable, "-m", "checkout.cli", "demo", "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"name": "saga checkout"' in out
    assert '"name": "step ship_order"' in out
    assert '"name": "compensate process_payment"' in out
    assert '"sagaway.idempotency_key"' in out
    assert '"service.name": "checkout-test"' in out


def test_unknown_otel_exporter_is_a_clear_error(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "OTEL_TRACES_EXPORTER": "zipkin"}
    result = runner.invoke(app, ["worker"], env=env)
    assert result.exit_code == 2
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in result.output


def test_serve_json_logs_name_every_saga_with_its_order(tmp_path: Path) -> None:
    import json

    import httpx

    env = {**os.environ, **_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    env["SAGAWAY_LOG_FORMAT"] = "json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "checkout.cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        startup = json.loads(proc.stdout.readline())
        assert "serving on" in startup["message"]
        base = startup["ui"].rstrip("/")
        assert startup["docs"] == f"{base}/docs"
        assert startup["metrics"] == f"{base}/metrics"
        response = httpx.post(
            f"{base}/orders",
            json={"user_id": "user_3", "product_id": "product_1", "quantity": 10},
            timeout=30,
        )
        order = response.json()
        assert order["status"] == "failed"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    mine = [r for r in records if r.get("saga_id") == order["saga_id"]]
    assert [r["message"] for r in mine] == [
        "saga started",
        "step process_payment failed: Insufficient funds",
        "saga compensating: Insufficient funds",
        "saga compensated: Insufficient funds",
    ]
    assert {r["order_id"] for r in mine} == {order["order_id"]}


def test_participant_refuses_a_non_loopback_demo_without_a_token(tmp_path: Path) -> None:
    import checkout.cli_services  # noqa: F401  - registers `participant` (as main() does)

    result = runner.invoke(
        app, ["participant", "payment", "--host", "0.0.0.0"], env={"SAGAWAY_ADMIN_TOKEN": ""}
    )
    assert result.exit_code == 2
    assert "only served on loopback" in result.output


def test_participant_unknown_service_exits_2() -> None:
    import checkout.cli_services  # noqa: F401

    result = runner.invoke(app, ["participant", "billing"])
    assert result.exit_code == 2
    assert "billing" in result.output


def test_python_dash_m_runs_the_services_commands() -> None:
    """`python -m checkout.cli` offers the same commands as the `checkout` script, the services'
    ones (registered by another module) included."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    result = subprocess.run(
        [sys.executable, "-m", "checkout.cli", "participant", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout
