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
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://", help="memory:// or sqlite")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    names = args.configs.split(",")
    if "checkout-default" in names:
        import logging

        from sagaway.logs import configure_logging

        configure_logging("text", logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="sagaway-obs-") as tmp:
        for round_ in range(args.rounds):
            for name in names:
                url = args.store
                if url == "sqlite":
                    url = f"sqlite:///{os.path.join(tmp, f'{name}-{round_}.db')}"
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
