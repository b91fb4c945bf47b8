"""The floors of a remote saga step on this machine, without Sagaway, interleaved with Sagaway.

What one remote step costs at the least with the stack issue 11 mandates, measured in the same
run as the checkout over RabbitMQ and over HTTP (``remote_checkout.py``), round after round, so
that the ratio holds although the machine's speed moves::

    python benchmarks/remote_floor.py --n 3000 --concurrency 32 --rounds 2 --project-n 1000
    python benchmarks/remote_floor.py --skip project          # the floors alone

* ``amqp classic`` / ``amqp quorum``: plain aiormq (the library under aio-pika) on uvloop, no
  Sagaway. A requester publishes a persistent command to a durable queue on a confirm channel
  and awaits the confirm; a responder (its own process) consumes with manual acks, publishes a
  persistent reply to a durable reply queue, awaits its confirm, then acks the command; the
  requester consumes the reply, acks it and sends its next command. C requests in flight.
* ``http``: an aiohttp client with a keep-alive pool (the HTTP dispatcher's client) posting a
  step command to a bare Starlette route on uvicorn (``http_client.py --bare``'s server: reads
  the JSON, answers a fixed reply), the client on uvloop.
* ``project``: ``remote_checkout.py --transports rabbitmq,http --logs sqlite`` (``--logs``):
  whole checkout sagas through the gateway and its three services, each on its own SQLite file.

CPU per round trip (floors) and per saga (project), user + system from ``/proc/<pid>/stat``
over the timed window, per process; ``broker`` is RabbitMQ's Erlang VM (shared with anyone else
using it). A checkout saga makes 3 remote round trips on the happy path plus about 0.3 more
(the ~10% that compensate), and is itself one HTTP request to the gateway, so its floor is
``3.3 x round trip + 1 x http server side``. The floors run on a vhost of their own, created
with ``rabbitmqctl`` and deleted afterwards. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiormq
import uvloop
from aiormq.abc import DeliveredMessage

from procs import broker_pid, cpu_seconds
from report import latency_ms

HERE = Path(__file__).resolve().parent
BROKER = os.environ.get("SAGAWAY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQCTL = os.environ.get("SAGAWAY_TEST_RABBITMQCTL", "rabbitmqctl")
# The test suite's broker lock (tests/servers.py): held shared while this uses the broker, so
# that the one test that stops the broker waits for the run to end instead of cutting it.
BROKER_LOCK = os.environ.get("SAGAWAY_TEST_BROKER_LOCK", "/tmp/sagaway-test-broker.lock")
ROUND_TRIPS_PER_SAGA = 3.3  # three forward steps, ~10% of sagas compensate (3 more, about)
PERSISTENT = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json")
BODY = json.dumps(
    {
        "message_id": "o-1:reserve:forward",
        "saga_id": "o-1",
        "step": "reserve",
        "phase": "forward",
        "attempt": 1,
        "command": "reserve",
        "payload": {"order_id": "o-1", "sku": "widget", "quantity": 2},
    }
).encode()


# -- AMQP: the responder (child process) ----------------------------------------------------


async def declare(channel: aiormq.abc.AbstractChannel, queue_type: str) -> None:
    arguments: dict[str, Any] = {"x-queue-type": queue_type}
    await channel.queue_declare("commands", durable=True, arguments=arguments)
    await channel.queue_declare("replies", durable=True, arguments=arguments)


async def respond(url: str, queue_type: str, prefetch: int) -> None:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await declare(channel, queue_type)
    await channel.basic_qos(prefetch_count=prefetch)

    async def on_command(message: DeliveredMessage) -> None:
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2,
            content_type="application/json",
            correlation_id=message.header.properties.correlation_id,
        )
        await channel.basic_publish(message.body, routing_key="replies", properties=properties)
        assert message.delivery_tag is not None
        await channel.basic_ack(message.delivery_tag)

    await channel.basic_consume("commands", on_command, no_ack=False)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await connection.close()


# -- AMQP: the requester (this process) -----------------------------------------------------


async def request(
    url: str, queue_type: str, n: int, concurrency: int, prefetch: int, responder: int
) -> dict[str, Any]:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    await declare(channel, queue_type)
    await channel.basic_qos(prefetch_count=prefetch)
    waiters: dict[str, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()

    async def on_reply(message: DeliveredMessage) -> None:
        assert message.delivery_tag is not None
        await channel.basic_ack(message.delivery_tag)
        waiter = waiters.pop(message.header.properties.correlation_id or "", None)
        if waiter is not None:
            waiter.set_result(None)

    await channel.basic_consume("replies", on_reply, no_ack=False)
    latencies: list[float] = []

    async def batch(count: int, record: bool) -> None:
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                correlation = uuid.uuid4().hex
                waiter = waiters[correlation] = loop.create_future()
                properties = aiormq.spec.Basic.Properties(
                    delivery_mode=2, content_type="application/json", correlation_id=correlation
                )
                started = time.perf_counter()
                await channel.basic_publish(BODY, routing_key="commands", properties=properties)
                await asyncio.wait_for(waiter, 60)
                if record:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    await batch(min(500, n), record=False)
    beam = broker_pid()
    pids = {"requester": os.getpid(), "responder": responder, "broker": beam}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await batch(n, record=True)
    elapsed = time.perf_counter() - started
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await connection.close()
    cpu = {name: (after[name] - before[name]) / n * 1000 for name in pids}
    return {
        "round_trips_per_s": round(n / elapsed, 1),
        **latency_ms(latencies),
        "cpu_ms": {name: round(v, 3) for name, v in cpu.items()},
    }


def amqp_floor(vhost_url: str, queue_type: str, args: argparse.Namespace) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--respond", vhost_url, "--queue-type", queue_type],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the responder did not start")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            measure = request(
                vhost_url, queue_type, args.n, args.concurrency, args.prefetch, child.pid
            )
            return runner.run(measure)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)


class Vhost:
    """A vhost of this benchmark's own on the shared broker, deleted on exit."""

    def __enter__(self) -> str:
        self.name = f"sagaway-floor-{uuid.uuid4().hex[:8]}"
        subprocess.run([RABBITMQCTL, "-q", "add_vhost", self.name], check=True)
        subprocess.run(
            [RABBITMQCTL, "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"],
            check=True,
        )
        return BROKER.rstrip("/") + "/" + self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run([RABBITMQCTL, "-q", "delete_vhost", self.name], check=False)


# -- HTTP ------------------------------------------------------------------------------------


def http_floor(args: argparse.Namespace) -> dict[str, Any]:
    from http_client import run_client

    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [sys.executable, str(HERE / "http_client.py"), "--serve", f"{tmp}/x.db", "--bare"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            base = f"http://127.0.0.1:{int(server.stdout.readline())}"
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                r = runner.run(
                    run_client("aiohttp", base, args.n, args.concurrency, 500, server.pid)
                )
        finally:
            server.terminate()
            server.wait(10)
    return {
        "round_trips_per_s": r["calls_per_s"],
        "p50_ms": r["p50_ms"],
        "p99_ms": r["p99_ms"],
        "cpu_ms": {
            "client": round(r["client_cpu_us_per_call"] / 1000, 3),
            "server": round(r["server_cpu_us_per_call"] / 1000, 3),
        },
    }


# -- the project -----------------------------------------------------------------------------


def project(args: argparse.Namespace) -> list[dict[str, Any]]:
    command = [
        sys.executable,
        str(HERE / "remote_checkout.py"),
        "--transports",
        "rabbitmq,http",
        "--logs",
        args.logs,
        "--n",
        str(args.project_n),
        "--concurrency",
        str(args.concurrency),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    runs: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])["runs"]
    return runs


# -- the table -------------------------------------------------------------------------------


def saga_floor(amqp: dict[str, Any] | None, http: dict[str, Any] | None, transport: str) -> float:
    """CPU ms a checkout saga costs at the least: its round trips plus its own HTTP request."""
    if http is None:
        return float("nan")
    order_request = float(http["cpu_ms"]["server"])
    step = http if transport == "http" else amqp
    if step is None:
        return float("nan")
    return ROUND_TRIPS_PER_SAGA * float(sum(step["cpu_ms"].values())) + order_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="round trips per floor run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--project-n", type=int, default=1000, help="sagas per project run")
    parser.add_argument(
        "--logs", default="sqlite", help="the project's saga logs: sqlite,postgresql"
    )
    parser.add_argument("--skip", default="", help="comma-separated: classic,quorum,http,project")
    parser.add_argument("--respond", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--queue-type", default="classic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.respond:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(respond(args.respond, args.queue_type, args.prefetch))
        return

    skip = set(filter(None, args.skip.split(",")))
    broker = os.open(BROKER_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(broker, fcntl.LOCK_SH)  # released when this process exits
    rounds: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        row: dict[str, Any] = {"round": round_no, "load_start": round(os.getloadavg()[0], 2)}
        for queue_type in ("classic", "quorum"):
            if queue_type not in skip:
                with Vhost() as url:
                    row[f"amqp_{queue_type}"] = amqp_floor(url, queue_type, args)
                print(
                    f"round {round_no} amqp {queue_type}: {row[f'amqp_{queue_type}']}",
                    file=sys.stderr,
                )
        if "http" not in skip:
            row["http"] = http_floor(args)
            print(f"round {round_no} http: {row['http']}", file=sys.stderr)
        if "project" not in skip:
            row["project"] = project(args)
            print(f"round {round_no} project: {row['project']}", file=sys.stderr)
        row["load_end"] = round(os.getloadavg()[0], 2)
        rounds.append(row)

    print(
        f"{'round':>5} {'measure':<22} {'per s':>8} {'p50 ms':>7} {'p99 ms':>8}  "
        "CPU ms per round trip / saga"
    )
    for row in rounds:
        for key in ("amqp_classic", "amqp_quorum", "http"):
            if key in row:
                r = row[key]
                cpu = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms"].items())
                total = sum(r["cpu_ms"].values())
                print(
                    f"{row['round']:>5} {key + ' (rt)':<22} {r['round_trips_per_s']:>8} "
                    f"{r['p50_ms']:>7} {r['p99_ms']:>8}  {cpu}; total {total:.3f}"
                )
        for run in row.get("project", []):
            total = sum(v for k, v in run["cpu_ms_per_saga"].items() if k != "client")
            amqp = row.get("amqp_quorum") or row.get("amqp_classic")
            floor = saga_floor(amqp, row.get("http"), run["transport"])
            run["floor_cpu_ms_per_saga"] = round(floor, 3)
            run["cpu_ms_per_saga_total"] = round(total, 3)
            run["ratio_to_floor"] = round(total / floor, 2)
            print(
                f"{row['round']:>5} {'project ' + run['transport'] + ' ' + run['log']:<22} "
                f"{run['sagas_per_s']:>8} {run['p50_ms']:>7} {run['p99_ms']:>8}  "
                f"total {total:.2f} (floor {floor:.2f}, x{total / floor:.1f})"
            )
        print(f"      load {row['load_start']} -> {row['load_end']}")
    print(
        f"  saga floor = {ROUND_TRIPS_PER_SAGA} x round trip (quorum for RabbitMQ, as the "
        "project) + the order request's server side; budget at 1,000 sagas/s on "
        f"{os.cpu_count()} cores: {os.cpu_count() or 1:.0f} ms CPU per saga"
    )
    print(
        json.dumps(
            {
                "benchmark": "remote_floor",
                "n": args.n,
                "concurrency": args.concurrency,
                "project_n": args.project_n,
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
