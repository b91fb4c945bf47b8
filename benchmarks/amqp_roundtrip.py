"""RabbitMQ round trips: command published (confirmed) -> participant -> reply consumed.

    python benchmarks/amqp_roundtrip.py --n 5000 --concurrency 32

What one round trip is: the engine side (this process) publishes one command through
``RabbitDispatcher.publish`` (persistent, publisher confirm awaited, as the outbox relay does),
a participant in a child process (the participant library: a SQLite inbox and a stock table,
one transaction per command, served by ``RabbitParticipant``) commits it and publishes its reply
(confirmed), then acks; this process's reply consumer hands the reply to the waiting caller
and acks it. Latency is from the start of ``publish`` to the reply reaching the handler. C
callers run at once, each sending its next command when its reply arrived.

Reported: round trips/s, p50/p99, and CPU per round trip (user + system from /proc over the
timed window) of each process: this one (engine side), the participant, and the broker
(``beam.smp``, when it can be found). The benchmark makes its own vhost (``rabbitmqctl``) and
deletes it; ``--url`` uses an existing vhost instead. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, update
from sqlalchemy.engine import Connection

from report import latency_ms, print_report
from sagaway.participant import Participant
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.state import Phase
from sagaway.transport.base import Command, Reply
from sagaway.transport.rabbitmq import RabbitDispatcher

BROKER = os.environ.get("SAGAWAY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
WARMUP = 200


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
            except OSError:
                continue
    return None


# -- the participant (child process) -------------------------------------------------------


def participant_main(url: str, database: str, queue_type: str, prefetch: int) -> None:
    metadata = MetaData()
    stock = Table(
        "stock",
        metadata,
        Column("sku", String(32), primary_key=True),
        Column("units", Integer, nullable=False),
    )
    inventory = Participant("inventory", database)

    @inventory.handler("reserve")
    def reserve(conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        conn.execute(
            update(stock)
            .where(stock.c.sku == payload["sku"])
            .values(units=stock.c.units - payload["qty"])
        )
        return {"reserved": payload["qty"]}

    inventory.create_inbox()
    metadata.create_all(inventory.sync_engine)
    with inventory.sync_engine.begin() as conn:
        conn.execute(insert(stock).values(sku="widget", units=10**9))

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with RabbitParticipant(
            inventory.handle, url, queue="inventory", queue_type=queue_type, prefetch=prefetch
        ):
            print("ready", flush=True)
            await stop.wait()
        await inventory.close()

    asyncio.run(serve())


# -- the engine side (this process) ---------------------------------------------------------


def command(i: int) -> Command:
    return Command(
        message_id=f"bench-{i}:reserve:forward",
        saga_id=f"bench-{i}",
        saga_name="checkout",
        step="reserve",
        phase=Phase.FORWARD,
        attempt=1,
        participant="inventory",
        command="reserve",
        payload={"sku": "widget", "qty": 1},
    )


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    vhost = None
    url = args.url
    if url is None:
        vhost = f"sagaway-bench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
        )
        url = BROKER.rstrip("/") + "/" + vhost
    workdir = tempfile.mkdtemp(prefix="amqp-bench-")
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--participant",
            "--url",
            url,
            "--database",
            f"sqlite:///{workdir}/inventory.db",
            "--queue-type",
            args.queue_type,
            "--prefetch",
            str(args.prefetch),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the participant did not start")
        return asyncio.run(measure(url, args, child.pid))
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        if vhost is not None:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=True)


async def measure(url: str, args: argparse.Namespace, participant_pid: int) -> dict[str, Any]:
    waiters: dict[str, asyncio.Future[Reply]] = {}
    latencies: list[float] = []
    failed = 0

    async def on_reply(reply: Reply) -> None:
        waiter = waiters.pop(reply.message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    dispatcher = RabbitDispatcher(url, queue_type=args.queue_type, prefetch=args.prefetch)
    dispatcher.on_reply(on_reply)

    async def one(i: int, record: bool) -> None:
        nonlocal failed
        cmd = command(i)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        waiters[cmd.message_id] = waiter
        start = time.perf_counter()
        await dispatcher.publish([cmd.to_outbox(0.0)])
        reply = await asyncio.wait_for(waiter, 60)
        if record:
            latencies.append(time.perf_counter() - start)
        if not reply.ok:
            failed += 1

    async def run(first: int, count: int, record: bool) -> None:
        todo = iter(range(first, first + count))

        async def worker() -> None:
            for i in todo:
                await one(i, record)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    beam = broker_pid()
    async with dispatcher:
        await run(0, WARMUP, record=False)
        before = (cpu_seconds(os.getpid()), cpu_seconds(participant_pid), cpu_seconds(beam))
        start = time.perf_counter()
        await run(WARMUP, args.n, record=True)
        elapsed = time.perf_counter() - start
        after = (cpu_seconds(os.getpid()), cpu_seconds(participant_pid), cpu_seconds(beam))
    per = [(b - a) / args.n * 1000 for a, b in zip(before, after, strict=True)]
    return {
        "transport": "rabbitmq",
        "queue_type": args.queue_type,
        "n": args.n,
        "concurrency": args.concurrency,
        "prefetch": args.prefetch,
        "round_trips_per_s": round(args.n / elapsed, 1),
        **latency_ms(latencies),
        "failed_replies": failed,
        "cpu_ms_per_rt_engine": round(per[0], 3),
        "cpu_ms_per_rt_participant": round(per[1], 3),
        "cpu_ms_per_rt_broker": round(per[2], 3) if beam else None,
        "messages_per_rt": 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--url", help="an existing vhost's URL (default: make one)")
    parser.add_argument("--participant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.participant:
        participant_main(args.url, args.database, args.queue_type, args.prefetch)
        return
    print_report(run_benchmark(args))


if __name__ == "__main__":
    main()
