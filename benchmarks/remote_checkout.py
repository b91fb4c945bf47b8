"""The checkout saga with its participants in-process, over HTTP and over RabbitMQ, in one run.

For each saga log (SQLite, PostgreSQL) and each transport, the benchmark starts the checkout on
this machine in a fresh temporary directory and places N orders, C at a time, over real HTTP
(``POST /orders?wait=10``: a 201 is a finished saga), with the order mix of
``http_checkout.py`` (~90% happy path, the rest compensating at inventory, payment or shipping):

* ``inprocess``: one ``checkout serve`` process, participants as function calls, the shop in
  the SQLite file (the saga log there too, or in a PostgreSQL schema);
* ``http`` / ``rabbitmq``: ``checkout up --transport ...``: the gateway and the payment,
  inventory and shipping services as four processes, each service on its own SQLite file; over
  RabbitMQ on a vhost of its own (created and deleted here).

Reported per run: sagas/s, p50/p99 latency of the order request, CPU per saga of every process
(``/proc/<pid>/stat`` before and after; the broker's Erlang VM is shared with whoever else uses
it), messages per saga (commands handled, read from the services' inbox tables, plus one reply
each) and the load average when the run started and ended (the machine may be shared). A table,
then, as the last line, one JSON object::

    .venv/bin/python benchmarks/remote_checkout.py --n 5000 --concurrency 32
    .venv/bin/python benchmarks/remote_checkout.py --transports rabbitmq --logs sqlite --n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from http_checkout import HAPPY_BALANCE_CENTS, HAPPY_STOCK, _env, _seed, run
from procs import broker_pid, cpu_seconds, server_process
from report import percentile

POSTGRES_URL = os.environ.get(
    "SAGAWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("SAGAWAY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQCTL = os.environ.get("SAGAWAY_TEST_RABBITMQCTL", "rabbitmqctl")
# The test suite's broker lock (tests/servers.py): held shared while a run uses the broker, so
# that the one test that stops the broker waits for the run instead of cutting it.
BROKER_LOCK = os.environ.get("SAGAWAY_TEST_BROKER_LOCK", "/tmp/sagaway-test-broker.lock")
SERVICES = ("payment", "inventory", "shipping")


@dataclass
class Target:
    url: str
    pids: dict[str, int]  # process name -> pid
    workdir: Path
    remote: bool  # services with inboxes of their own


@dataclass
class Outcome:
    transport: str
    log: str
    n: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]
    messages_per_saga: float | None
    load: tuple[float, float]
    http: dict[str, int]
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the servers


def _wait_health(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.1)  # a child's start-up: nothing to wait on but its health route
    raise SystemExit(f"{url} did not become healthy")


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def inprocess(workdir: Path, store_url: str | None) -> Iterator[Target]:
    db_path = workdir / "sagaway.db"
    _seed(db_path)
    env = {**os.environ, **_env(db_path), "SAGAWAY_TRANSPORT": "inprocess"}
    if store_url:
        env["SAGAWAY_STORE_URL"] = store_url
    argv = [sys.executable, "-m", "checkout.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    with server_process(argv, env=env, start_timeout=120) as (url, proc):
        yield Target(url, {"gateway": proc.pid}, workdir, remote=False)


def _children(parent: int) -> dict[str, int]:
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
            continue
        args = [a.decode() for a in cmdline]
        name = next((s for s in SERVICES if s in args), "gateway")
        found[name] = int(proc.name)
    return found


@contextlib.contextmanager
def up(
    workdir: Path, transport: str, base_port: int, store_url: str | None, rabbitmq_url: str
) -> Iterator[Target]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    if store_url:
        env["SAGAWAY_STORE_URL"] = store_url
    if rabbitmq_url:
        env["SAGAWAY_RABBITMQ_URL"] = rabbitmq_url
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "checkout",
            "up",
            "--transport",
            transport,
            "--base-port",
            str(base_port),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if re.match(r"gateway +\| checkout serving on", line):
                break
        else:
            raise SystemExit(f"checkout up --transport {transport} did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        url = f"http://127.0.0.1:{base_port}"
        _wait_health(url, proc)
        # Top up what the happy path consumes, in the services' own databases.
        with sqlite3.connect(workdir / "inventory.db") as conn:
            conn.execute(
                "UPDATE products SET stock = ? WHERE id IN ('product_1', 'product_2')",
                (HAPPY_STOCK,),
            )
        with sqlite3.connect(workdir / "payment.db") as conn:
            conn.execute(
                "UPDATE accounts SET balance_cents = ? WHERE id IN ('user_1', 'user_2')",
                (HAPPY_BALANCE_CENTS,),
            )
        yield Target(url, _children(proc.pid), workdir, remote=True)
    finally:
        _stop(proc, signal.SIGINT)


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    import psycopg

    schema = f"bench_remote_{uuid.uuid4().hex[:8]}"
    try:
        yield f"{POSTGRES_URL}?schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def rabbit_vhost() -> Iterator[str]:
    vhost = f"sagaway-bench-{uuid.uuid4().hex[:8]}"
    lock = os.open(BROKER_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(lock, fcntl.LOCK_SH)
    subprocess.run([RABBITMQCTL, "-q", "add_vhost", vhost], check=True)
    try:
        subprocess.run(
            [RABBITMQCTL, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
        )
        yield RABBITMQ_URL.rstrip("/") + "/" + vhost
    finally:
        subprocess.run([RABBITMQCTL, "-q", "delete_vhost", vhost], check=False)
        os.close(lock)  # (closing releases the lock)


def commands_handled(workdir: Path) -> int:
    total = 0
    for name in SERVICES:
        with contextlib.closing(sqlite3.connect(workdir / f"{name}.db")) as conn:
            total += conn.execute(f"SELECT count(*) FROM {name}_inbox").fetchone()[0]
    return total


# --------------------------------------------------------------------------- one run


def measure(target: Target, transport: str, log: str, args: argparse.Namespace) -> Outcome:
    pids = dict(target.pids)
    if transport == "rabbitmq" and (beam := broker_pid()) is not None:
        pids["broker*"] = beam
    with asyncio.Runner() as runner:
        if args.warmup:
            runner.run(run(target.url, args.warmup, args.concurrency, 0, False, "aiohttp"))
        handled = commands_handled(target.workdir) if target.remote else 0
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load_start = os.getloadavg()[0]
        client_cpu = time.process_time()
        timed = run(target.url, args.n, args.concurrency, 0, False, "aiohttp")
        results, elapsed = runner.run(timed)
        client = time.process_time() - client_cpu
        load_end = os.getloadavg()[0]
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    done = len(results.latencies)
    cpu_ms = {name: (after[name] - before[name]) / max(done, 1) * 1000 for name in pids}
    cpu_ms["client"] = client / max(done, 1) * 1000
    messages = None
    if target.remote and done:
        messages = 2 * (commands_handled(target.workdir) - handled) / done
    return Outcome(
        transport=transport,
        log=log,
        n=done,
        seconds=elapsed,
        rate=done / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(results.latencies, 0.50) * 1000,
        p99_ms=percentile(results.latencies, 0.99) * 1000,
        cpu_ms=cpu_ms,
        messages_per_saga=messages,
        load=(load_start, load_end),
        http=dict(results.http),
        outcomes=dict(sorted(results.outcomes.items())),
        errors=dict(results.errors),
    )


def one(transport: str, log: str, args: argparse.Namespace, port: int) -> Outcome:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        store_url = stack.enter_context(pg_schema()) if log == "postgresql" else None
        if transport == "inprocess":
            target = stack.enter_context(inprocess(workdir, store_url))
        else:
            rabbit = stack.enter_context(rabbit_vhost()) if transport == "rabbitmq" else ""
            target = stack.enter_context(up(workdir, transport, port, store_url, rabbit))
        print(f"{transport} / {log}: {target.url} pids {target.pids}", file=sys.stderr)
        return measure(target, transport, log, args)


def table(outcomes: list[Outcome]) -> None:
    print(
        f"{'transport':<10} {'saga log':<11} {'sagas':>6} {'sagas/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'msgs/saga':>9} {'load':>11}  CPU ms/saga per process"
    )
    for o in outcomes:
        messages = "-" if o.messages_per_saga is None else f"{o.messages_per_saga:.2f}"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in o.cpu_ms.items())
        load = f"{o.load[0]:.1f}->{o.load[1]:.1f}"
        print(
            f"{o.transport:<10} {o.log:<11} {o.n:>6} {o.rate:>8.1f} {o.p50_ms:>7.1f} "
            f"{o.p99_ms:>7.1f} {messages:>9} {load:>11}  {cpu}"
        )
    for o in outcomes:
        bad = {k: v for k, v in o.http.items() if k not in ("201",)}
        if bad or o.errors:
            print(f"  {o.transport}/{o.log}: http {o.http} errors {o.errors}")
    print("  * broker: RabbitMQ's Erlang VM, shared with every other user of the broker")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="sagas to time per run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200, help="orders sent before timing")
    parser.add_argument(
        "--transports", default="inprocess,http,rabbitmq", help="comma-separated subset"
    )
    parser.add_argument("--logs", default="sqlite,postgresql", help="comma-separated subset")
    parser.add_argument("--base-port", type=int, default=18100)
    args = parser.parse_args()

    outcomes = []
    for log in args.logs.split(","):
        for transport in args.transports.split(","):
            outcome = one(transport, log, args, args.base_port)
            print(
                f"{transport}/{log}: {outcome.rate:.1f} sagas/s, p99 {outcome.p99_ms:.1f} ms",
                file=sys.stderr,
            )
            outcomes.append(outcome)
    table(outcomes)
    summary: dict[str, Any] = {
        "n": args.n,
        "concurrency": args.concurrency,
        "cores": os.cpu_count(),
        "runs": [
            {
                "transport": o.transport,
                "log": o.log,
                "sagas": o.n,
                "sagas_per_s": round(o.rate, 1),
                "p50_ms": round(o.p50_ms, 2),
                "p99_ms": round(o.p99_ms, 2),
                "cpu_ms_per_saga": {k: round(v, 3) for k, v in o.cpu_ms.items()},
                "messages_per_saga": None
                if o.messages_per_saga is None
                else round(o.messages_per_saga, 2),
                "load_start": round(o.load[0], 2),
                "load_end": round(o.load[1], 2),
                "http": o.http,
                "outcomes": o.outcomes,
                "errors": o.errors,
            }
            for o in outcomes
        ],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
