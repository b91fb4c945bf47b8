"""RabbitMQ round trips: command published (confirmed) -> participant -> reply consumed.

    python benchmarks/amqp_roundtrip.py --n 5000 --concurrency 32
    python benchmarks/amqp_roundtrip.py --mode sagas --n 5000 --concurrency 32
    python benchmarks/amqp_roundtrip.py --bare --n 5000 --concurrency 32   # messaging floor

What one round trip is: the engine side (this process) publishes one command through
``RabbitDispatcher.publish`` (persistent, publisher confirm awaited, as the outbox relay does),
a participant in a child process (the participant library: a SQLite inbox and a counter table,
one transaction per command, served by ``RabbitParticipant``) commits it and publishes its reply
(confirmed), then acks; this process's reply consumer hands the reply to the waiting caller
and acks it. Latency is from the start of ``publish`` to the reply reaching the handler. C
callers run at once, each sending its next command when its reply arrived.

``--loop asyncio``: the standard event loop in both processes instead of uvloop (the loop
``checkout`` runs its gateway and services on, and the default here).

``--bare``: the participants answer at once (no database, no inbox): what the messaging alone
costs per round trip, this library's consumer and publisher included. A saga's floor is that
times its round trips (three forward steps: three).

``--mode sagas``: whole sagas through the engine instead (saga log on SQLite, outbox relay,
parked sagas, replies taken by ``Engine.deliver``): payment.start -> inventory.reserve ->
shipping.create, three remote steps, six messages per saga; latency from ``engine.start`` to
the saga's end. The child process serves payment, inventory and shipping (a SQLite file each).

Reported: throughput, p50/p99, and CPU per round trip or saga (user + system from /proc over
the timed window) of each process: this one (engine side), the participants, and the broker
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
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, update
from sqlalchemy.engine import Connection

from procs import broker_pid, cpu_seconds
from report import latency_ms, print_report
from sagaway import Engine, Saga, StepContext
from sagaway.participant import Participant
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.state import Phase
from sagaway.transport.base import Command, Reply
from sagaway.transport.rabbitmq import RabbitDispatcher

BROKER = os.environ.get("SAGAWAY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
WARMUP = 200


# -- the participant (child process) -------------------------------------------------------


SERVICES = {"payment": "start", "inventory": "reserve", "shipping": "create"}


def service(name: str, command: str, database: str) -> Participant:
    """A participant whose one command moves a counter (an effect, in its inbox's transaction)."""
    metadata = MetaData()
    counters = Table(
        "counters",
        metadata,
        Column("name", String(32), primary_key=True),
        Column("n", Integer, nullable=False),
    )
    participant = Participant(name, database)

    def apply(conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        conn.execute(
            update(counters)
            .where(counters.c.name == "units")
            .values(n=counters.c.n + int(payload.get("qty", 1)))
        )
        return {"done": command}

    participant.handler(command)(apply)
    participant.create_inbox()
    metadata.create_all(participant.sync_engine)
    with participant.sync_engine.begin() as conn:
        conn.execute(insert(counters).values(name="units", n=0))
    return participant


async def _bare(command: Command) -> Reply:
    """The floor's participant: answers at once, no database, no inbox."""
    return Reply.success(command, {"done": command.command})


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop``: the event loop ``checkout`` runs its services on (when installed)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def participant_main(
    url: str, workdir: str, queue_type: str, prefetch: int, bare: bool, loop: str
) -> None:
    """payment, inventory and shipping, each on its own SQLite file, served over RabbitMQ
    (``bare``: answered at once, the messaging floor)."""
    services = [
        service(name, command, f"sqlite:///{workdir}/{name}.db")
        for name, command in SERVICES.items()
    ]

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumers = [
            RabbitParticipant(
                _bare if bare else p.handle,
                url,
                queue=p.name,
                queue_type=queue_type,
                prefetch=prefetch,
            )
            for p in services
        ]
        for consumer in consumers:
            await consumer.start()
        print("ready", flush=True)
        await stop.wait()
        for consumer in consumers:
            await consumer.stop()
        for p in services:
            await p.close()

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve())


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
            workdir,
            "--queue-type",
            args.queue_type,
            "--prefetch",
            str(args.prefetch),
            "--loop",
            args.loop,
            *(["--bare"] if args.bare else []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the participant did not start")
        measure = measure_sagas if args.mode == "sagas" else measure_round_trips
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            return runner.run(measure(url, args, child.pid, workdir))
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        if vhost is not None:
            subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=True)


async def measure_round_trips(
    url: str, args: argparse.Namespace, participant_pid: int, workdir: str
) -> dict[str, Any]:
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
        "mode": "round-trips",
        "participant": "bare" if args.bare else "sqlite inbox",
        "queue_type": args.queue_type,
        "loop": args.loop,
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


def checkout_saga() -> Saga:
    """payment.start -> inventory.reserve -> shipping.create, each a remote step."""
    saga = Saga("amqp-bench-checkout")
    for participant, command in SERVICES.items():

        def payload(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
            return {"order": order["id"], "qty": 1}

        payload.__name__ = f"{participant}_{command}"
        saga.remote(participant, command, timeout=60.0)(payload)
    return saga


async def measure_sagas(
    url: str, args: argparse.Namespace, participant_pid: int, workdir: str
) -> dict[str, Any]:
    saga = checkout_saga()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    dispatcher = RabbitDispatcher(url, queue_type=args.queue_type, prefetch=args.prefetch)
    engine = Engine(f"sqlite:///{workdir}/sagas.db", sagas=[saga], transport=dispatcher)

    async def run(first: int, count: int, record: bool) -> None:
        todo = iter(range(first, first + count))

        async def worker() -> None:
            for i in todo:
                start = time.perf_counter()
                saga_id = await engine.start(saga, {"id": f"o-{i}"})
                final = await engine.wait(saga_id, timeout=120)
                if record:
                    latencies.append(time.perf_counter() - start)
                    statuses[str(final.status)] = statuses.get(str(final.status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    beam = broker_pid()
    async with dispatcher, engine:
        await run(0, WARMUP, record=False)
        before = (cpu_seconds(os.getpid()), cpu_seconds(participant_pid), cpu_seconds(beam))
        start = time.perf_counter()
        await run(WARMUP, args.n, record=True)
        elapsed = time.perf_counter() - start
        after = (cpu_seconds(os.getpid()), cpu_seconds(participant_pid), cpu_seconds(beam))
    per = [(b - a) / args.n * 1000 for a, b in zip(before, after, strict=True)]
    return {
        "transport": "rabbitmq",
        "mode": "sagas",
        "saga_log": "sqlite",
        "queue_type": args.queue_type,
        "loop": args.loop,
        "n": args.n,
        "concurrency": args.concurrency,
        "sagas_per_s": round(args.n / elapsed, 1),
        **latency_ms(latencies),
        "statuses": statuses,
        "cpu_ms_per_saga_engine": round(per[0], 3),
        "cpu_ms_per_saga_participants": round(per[1], 3),
        "cpu_ms_per_saga_broker": round(per[2], 3) if beam else None,
        "messages_per_saga": 2 * len(SERVICES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["round-trips", "sagas"], default="round-trips")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--url", help="an existing vhost's URL (default: make one)")
    parser.add_argument(
        "--bare",
        action="store_true",
        help="participants answer at once, without a database: the messaging floor",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of both processes (uvloop: what checkout's services run on)",
    )
    parser.add_argument("--participant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.participant:
        participant_main(
            args.url, args.database, args.queue_type, args.prefetch, args.bare, args.loop
        )
        return
    print_report(run_benchmark(args))


if __name__ == "__main__":
    main()
