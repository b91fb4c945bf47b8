"""What observability costs the engine: CPU per saga with no hook, with the Prometheus hook, and
with the tracing hook over OpenTelemetry's no-op tracer (the API without an SDK configured).

``checkout-default`` is what ``checkout serve`` registers by default: metrics plus the saga log
lines at INFO (two lines per saga, formatted, written to /dev/null).

"tracing off" in production registers no hook at all (``sagaway.tracing.tracing_hook()`` returns
None unless ``OTEL_TRACES_EXPORTER`` asks for spans), which is the ``none`` row; the
``tracing-noop`` row bounds what a hook costs when it is installed but nothing records.

The sagas are engine_throughput.py's (three steps, every 10th compensates). Configurations run
interleaved, ``--rounds`` times each, on a fresh store per run; the table shows the median CPU
per saga (process time: steadier than wall time on a shared machine) and sagas/s:

    python benchmarks/observability_cost.py --store memory:// --n 5000 --rounds 5
    python benchmarks/observability_cost.py --store sqlite --n 3000 --rounds 3

``--callgrind`` counts instructions instead (repeatable to ~0.1% on a loaded machine, unlike CPU
time): each configuration of each round is its own ``valgrind --tool=callgrind`` process that
runs 50 warm-up sagas, then ``--n`` sagas inside ``functools.reduce`` (``--toggle-collect``: only
those are counted), with the GC off and no recovery pass or lease renewal in that window (they
run by the clock), ``PYTHONHASHSEED=0``;
the table shows instructions per saga:

    python benchmarks/observability_cost.py --callgrind --n 1000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from engine_throughput import build_saga, drive, make_ledger
from report import print_report
from sagaway import Engine
from sagaway.hooks import Hook
from sagaway.store import open_store


def no_hooks() -> list[Hook]:
    return []


def metrics_hooks() -> list[Hook]:
    from prometheus_client import CollectorRegistry

    from sagaway.metrics import PrometheusHook

    return [PrometheusHook(CollectorRegistry())]


def tracing_noop_hooks() -> list[Hook]:
    from sagaway.tracing import TracingHook

    return [TracingHook()]  # the API's global tracer: a no-op without an SDK


def checkout_default_hooks() -> list[Hook]:
    """What `checkout serve` registers by default: metrics and the saga log lines (at the
    default INFO level, written to a null stream: formatting is counted, terminal I/O not)."""
    from sagaway.logs import LoggingHook

    return [*metrics_hooks(), LoggingHook(fields=lambda record: {"order_id": record.id})]


CONFIGS: dict[str, Callable[[], list[Hook]]] = {
    "none": no_hooks,
    "metrics": metrics_hooks,
    "checkout-default": checkout_default_hooks,
    "tracing-noop": tracing_noop_hooks,
}


async def one_run(url: str, hooks: list[Hook], n: int, concurrency: int) -> dict[str, Any]:
    store = open_store(url)
    async with Engine(store, owner_id="bench", hooks=hooks) as engine:
        ledger = make_ledger(store)
        await ledger.setup()
        saga = build_saga(ledger)
        gc.collect()
        result = await drive(engine, saga, range(n), concurrency)
    return {
        "cpu_us": result["cpu_s"] / n * 1e6,
        "per_s": n / (result["ended"] - result["began"]),
    }


WARM_UP = 50


def counted_run(url: str, name: str, n: int, concurrency: int) -> None:
    """The process callgrind runs: warm-up sagas, then ``n`` sagas inside functools.reduce."""
    if name == "checkout-default":
        quiet_logs()
    loop = asyncio.new_event_loop()
    store = open_store(url)
    # No recovery pass and no lease renewal during the counted window (they run by the clock,
    # and callgrind is ~50x slower: their count would follow the machine's load, not the code).
    engine = Engine(
        store,
        owner_id="bench",
        hooks=CONFIGS[name](),
        recovery_interval=3600,
        lease_seconds=3600,
    )
    loop.run_until_complete(engine.open())
    ledger = make_ledger(store)
    loop.run_until_complete(ledger.setup())
    saga = build_saga(ledger)
    loop.run_until_complete(drive(engine, saga, range(WARM_UP), concurrency))
    gc.collect()
    gc.disable()
    measured = range(WARM_UP, WARM_UP + n)

    def counted(_: object, __: object) -> None:
        loop.run_until_complete(drive(engine, saga, measured, concurrency))
        fold(engine)  # the metrics hook's deferred counting (done when scraped): counted

    # functools.reduce: a C function around the counted sagas, for callgrind's --toggle-collect.
    functools.reduce(counted, [0, 0])
    gc.enable()
    loop.run_until_complete(engine.close())
    loop.close()


def fold(engine: Engine) -> None:
    """What the metrics hook does at a scrape for the sagas since the last one: count the step
    and commit times the engine appended into the histograms. (Building the families, a fixed
    cost per scrape whatever the number of sagas, is left out.)"""
    for hook in engine.hooks:
        fold_sinks = getattr(hook, "_fold", None)
        if fold_sinks is not None:
            fold_sinks()


def count_instructions(url: str, name: str, n: int, concurrency: int, tmp: str) -> int:
    out = os.path.join(tmp, f"callgrind.{name}")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--counted",
        name,
        "--store",
        url,
        "--n",
        str(n),
        "--concurrency",
        str(concurrency),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(out) as file:
        for line in file:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def quiet_logs() -> None:
    import logging

    from sagaway.logs import configure_logging

    configure_logging("text", logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115


def store_url(store: str, tmp: str, run: str) -> str:
    """``store`` as given, or for ``sqlite`` a fresh file per run (a log that grows between
    runs would make later configurations pay for earlier ones)."""
    return f"sqlite:///{os.path.join(tmp, f'{run}.db')}" if store == "sqlite" else store


def callgrind_main(args: argparse.Namespace, names: list[str]) -> None:
    samples: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="sagaway-obs-") as tmp:
        for round_ in range(args.rounds):
            for name in names:
                url = store_url(args.store, tmp, f"{name}-{round_}")
                total = count_instructions(url, name, args.n, args.concurrency, tmp)
                samples[name].append(total / args.n)
                print(f"round {round_ + 1} {name}: {total / args.n / 1000:.1f}k instructions/saga")
    result: dict[str, Any] = {
        "store": args.store.split(":")[0],
        "n": args.n,
        "rounds": args.rounds,
        "counted": "callgrind instructions per saga",
    }
    base = statistics.median(samples["none"]) if "none" in names else None
    for name in names:
        per_saga = statistics.median(samples[name])
        result[f"{name}_kinstr_per_saga"] = round(per_saga / 1000, 1)
        if base is not None and name != "none":
            result[f"{name}_ratio"] = round(per_saga / base, 3)
    print_report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://", help="memory:// or sqlite")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--callgrind", action="store_true", help="count instructions per saga")
    parser.add_argument("--counted", choices=CONFIGS, help=argparse.SUPPRESS)  # callgrind's child
    args = parser.parse_args()
    if args.counted:
        counted_run(args.store, args.counted, args.n, args.concurrency)
        return
    names = args.configs.split(",")
    if args.callgrind:
        callgrind_main(args, names)
        return
    if "checkout-default" in names:
        quiet_logs()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="sagaway-obs-") as tmp:
        for round_ in range(args.rounds):
            for name in names:
                url = store_url(args.store, tmp, f"{name}-{round_}")
                hooks = CONFIGS[name]()
                run = one_run(url, hooks, args.n, args.concurrency)
                samples[name].append(asyncio.run(run))
    base = statistics.median(s["cpu_us"] for s in samples["none"]) if "none" in names else None
    result: dict[str, Any] = {"store": args.store.split(":")[0], "n": args.n, "rounds": args.rounds}
    for name in names:
        cpu = statistics.median(s["cpu_us"] for s in samples[name])
        rate = statistics.median(s["per_s"] for s in samples[name])
        result[f"{name}_cpu_us_per_saga"] = round(cpu, 1)
        result[f"{name}_sagas_per_s"] = round(rate, 1)
        if base is not None and name != "none":
            result[f"{name}_cpu_ratio"] = round(cpu / base, 3)
    print_report(result)


if __name__ == "__main__":
    main()
