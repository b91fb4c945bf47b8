"""Waiting sagas: park N sagas on a signal, then signal them all.

Each saga is ``wait("go", timeout=1 day)`` then a trivial step. The engine (one process, the
store on SQLite by default) starts ``--sagas`` of them and waits until every one is parked;
we read its RSS before starting and after parking (parked sagas should cost rows, not RAM).
Then signals go out, paced at ``--rate`` per second for the first ``--paced`` sagas (latency
under a steady load: from ``engine.signal`` being called to the saga's next step starting, and
to ``signal`` returning, i.e. durably recorded), and as fast as ``--concurrency`` concurrent
callers go for the rest (signals/s). A table, then one JSON line.

    python benchmarks/waiting_sagas.py --sagas 100000 --rate 1000 --paced 30000
    python benchmarks/waiting_sagas.py --store postgresql://postgres@127.0.0.1/sagaway
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from report import latency_ms
from sagaway import Engine, Saga, SagaRecord, StepContext
from sagaway.hooks import Hook


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Writes:
    """Counts the store's write operations (each one durable before it returns): wraps the
    engine's store in place, so what a signal costs in writes is measured, not inferred."""

    NAMES = ("create", "commit", "acquire", "claim", "request_cancel")

    def __init__(self, store: Any) -> None:
        self.count = 0
        for name in self.NAMES:
            setattr(store, name, self._counted(getattr(store, name)))

    def _counted(self, method: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await method(*args, **kwargs)

        return counted


class Parked(Hook):
    def __init__(self, n: int) -> None:
        self.left, self.done = n, asyncio.Event()
        self.count, self.progress = 0, asyncio.Event()

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self.left -= 1
        self.count += 1
        self.progress.set()
        if self.left <= 0:
            self.done.set()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    resumed: dict[str, float] = {}
    finished = asyncio.Event()
    total = args.sagas

    saga = Saga("waiting_bench")
    saga.wait("go", timeout=86400)

    @saga.step
    async def done(ctx: StepContext, order: Any) -> None:
        resumed[ctx.saga_id] = time.perf_counter()
        if len(resumed) == total:
            finished.set()

    parked = Parked(total)
    engine = Engine(args.store, sagas=[saga], hooks=[parked], owner_id="waiting-bench")
    async with engine:
        writes = Writes(engine.store)
        gc.collect()
        rss_before = rss_mb()
        began = time.perf_counter()
        ids: list[str] = []
        batch = 500
        for at in range(0, total, batch):
            ids += await asyncio.gather(
                *(engine.start(saga, i) for i in range(at, min(at + batch, total)))
            )
            # Keep the runs on their way to the park bounded, as a steady stream of new
            # orders would: what we measure is what parked sagas cost, not a backlog.
            while len(ids) - parked.count > args.in_flight:
                parked.progress.clear()
                await parked.progress.wait()
        await parked.done.wait()
        park_s = time.perf_counter() - began
        for _ in range(1000):  # the last runs are ending after their park
            if not engine.running:
                break
            await asyncio.sleep(0.01)
        gc.collect()
        rss_parked = rss_mb()
        waiting = (await engine.list_waiting("signal:go", limit=1)).total

        called: dict[str, float] = {}
        acked: list[float] = []

        async def send(saga_id: str) -> None:
            start = called[saga_id] = time.perf_counter()
            await engine.signal(saga_id, "go", signal_id=f"bench-{saga_id}")
            acked.append(time.perf_counter() - start)

        # Paced: one signal every 1/rate s (open loop: a slow signal does not slow the next).
        paced = ids[: args.paced]
        tasks = []
        cpu0, load0 = time.process_time(), os.getloadavg()[0]
        writes0 = writes.count
        stats = getattr(engine.store, "stats", None)  # group-commit counters (SQL stores)
        batches0 = stats.batches if stats is not None else 0
        t0 = time.perf_counter()
        for i, saga_id in enumerate(paced):
            delay = t0 + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(saga_id)))
        await asyncio.gather(*tasks)
        paced_s = time.perf_counter() - t0
        paced_cpu = time.process_time() - cpu0
        for _ in range(6000):
            if len(resumed) >= len(paced):
                break
            await asyncio.sleep(0.01)
        paced_writes = writes.count - writes0
        paced_batches = stats.batches - batches0 if stats is not None else None
        paced_latency = [resumed[s] - called[s] for s in paced]
        paced_ack = list(acked)

        # Unpaced: as fast as --concurrency callers go.
        rest = ids[args.paced :]
        queue = iter(rest)

        async def caller() -> None:
            for saga_id in queue:
                await send(saga_id)

        t1, cpu1 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        if rest:
            await asyncio.wait_for(finished.wait(), 600)
        burst_s = time.perf_counter() - t1
        burst_cpu = time.process_time() - cpu1
        load1 = os.getloadavg()[0]
        burst_latency = [resumed[s] - called[s] for s in rest]
        gc.collect()
        rss_after = rss_mb()

    return {
        "store": args.store.split("://")[0],
        "sagas": total,
        "parked_seen": waiting,
        "park_s": round(park_s, 2),
        "parked_per_s": round(total / park_s),
        "rss_before_mb": round(rss_before, 1),
        "rss_parked_mb": round(rss_parked, 1),
        "rss_growth_mb": round(rss_parked - rss_before, 1),
        "rss_after_signals_mb": round(rss_after, 1),
        "paced_rate": args.rate,
        "paced_signals": len(paced),
        "paced_achieved_per_s": round(len(paced) / paced_s),
        "signal_to_resume_ms": latency_ms(paced_latency),
        "signal_ack_ms": latency_ms(paced_ack),
        # CPU of this process per signal (the signal, the saga's last step, its end): what a
        # rate costs on an idle machine; the load average says how shared this one was.
        # Store writes per signal, the saga's last step and end included (each durable).
        "paced_writes_per_signal": round(paced_writes / max(len(paced), 1), 3),
        # Group commits (each one durable COMMIT, one fsync) per signal: fewer writes per
        # signal make fewer or smaller batches.
        "paced_commits_per_signal": (
            None if paced_batches is None else round(paced_batches / max(len(paced), 1), 3)
        ),
        "paced_cpu_ms_per_signal": round(paced_cpu * 1000 / max(len(paced), 1), 3),
        "burst_cpu_ms_per_signal": round(burst_cpu * 1000 / max(len(rest), 1), 3),
        "loadavg_1m": [round(load0, 1), round(load1, 1)],
        "cpus": os.cpu_count(),
        "burst_signals": len(rest),
        "burst_signals_per_s": round(len(rest) / burst_s) if rest else None,
        "burst_signal_to_resume_ms": latency_ms(burst_latency) if rest else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="")
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--paced", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=2000, help="unparked runs at most")
    args = parser.parse_args()
    args.paced = min(args.paced, args.sagas)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.store:
            args.store = f"sqlite:///{os.path.join(tmp, 'waiting.db')}"
        result = asyncio.run(run(args))
    p = result["signal_to_resume_ms"]
    rows = [
        ("store", result["store"]),
        ("sagas parked", f"{result['sagas']:,} in {result['park_s']} s"),
        ("RSS before / parked", f"{result['rss_before_mb']} / {result['rss_parked_mb']} MB"),
        ("RSS growth for the parked", f"{result['rss_growth_mb']} MB"),
        (
            f"signal->resume at {args.rate:.0f}/s",
            f"p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms ({result['paced_achieved_per_s']}/s)",
        ),
        (
            "signal ack (durable)",
            f"p50 {result['signal_ack_ms']['p50_ms']} ms, "
            f"p99 {result['signal_ack_ms']['p99_ms']} ms",
        ),
        ("store writes per signal (paced)", str(result["paced_writes_per_signal"])),
        ("burst signals/s", str(result["burst_signals_per_s"])),
        ("CPU per signal (burst)", f"{result['burst_cpu_ms_per_signal']} ms"),
        ("load average (1 min)", f"{result['loadavg_1m']} on {result['cpus']} CPUs"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
