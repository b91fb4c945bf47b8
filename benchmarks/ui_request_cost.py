"""Server CPU per UI request, two source trees side by side (A/B), interleaved.

``ui_live_cost.py`` measures the whole mix of 50 live pages, but on a shared machine its order
rate (and so its CPU per order) moves by +-15% between windows. This one isolates what a saga
page costs the server: it starts two ``checkout serve`` processes (demo, fresh SQLite files), A
on the source tree ``--a`` (``PYTHONPATH``; e.g. a ``git archive`` of main) and B on ``--b`` (or
this checkout), and measures each server's CPU (/proc) per request of each kind, the two
servers alternating within every round:

* ``health``: ``GET /health``, the floor of any request;
* ``saga-events``: the event stream of a finished saga (timeline, then ``end``);
* ``follow``: ``POST /orders?wait=0`` then the saga's event stream read to its end (what a saga
  page following a fresh order costs, the order included);
* ``post-wait``: ``POST /orders?wait=10`` (the same order without a page): ``follow`` minus
  this is the page's share.

::

    git archive main src | tar -x -C /tmp/main-tree
    python benchmarks/ui_request_cost.py --a /tmp/main-tree/src --n 400 --rounds 4

Prints a table, then, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from http_checkout import order_body, serve
from procs import cpu_seconds
from report import print_report

KINDS = ("health", "saga-events", "follow", "post-wait")


class Target:
    """One server, its finished sagas and its order numbers."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.finished: list[str] = []
        self.next_order = 0

    def order(self) -> dict[str, Any]:
        self.next_order += 1
        return order_body(self.next_order)[1]


async def drain(response: aiohttp.ClientResponse) -> None:
    async for _ in response.content:
        pass


async def one(session: aiohttp.ClientSession, target: Target, kind: str, i: int) -> None:
    if kind == "health":
        async with session.get("/health") as response:
            await response.read()
    elif kind == "saga-events":
        saga_id = target.finished[i % len(target.finished)]
        async with session.get(f"/ui/sagas/{saga_id}/events") as response:
            await drain(response)
    elif kind == "follow":
        async with session.post("/orders", params={"wait": 0}, json=target.order()) as response:
            saga_id = (await response.json())["saga_id"]
        async with session.get(f"/ui/sagas/{saga_id}/events") as response:
            await drain(response)
    else:
        async with session.post("/orders", params={"wait": 10}, json=target.order()) as response:
            await response.read()


async def cpu_ms_per_request(target: Target, kind: str, n: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(target.url) as session:
        if not target.finished:
            for _ in range(100):
                params = {"wait": 10}
                async with session.post("/orders", params=params, json=target.order()) as r:
                    target.finished.append((await r.json())["saga_id"])
        numbers = iter(range(n))

        async def worker() -> None:
            for i in numbers:
                await one(session, target, kind, i)

        before = cpu_seconds(target.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (cpu_seconds(target.pid) - before) / n * 1000


async def run(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {f"{t} {k}": [] for t in targets for k in KINDS}
    for target in targets.values():  # warm up: imports, template compilation, caches
        await cpu_ms_per_request(target, "health", 200, args.concurrency)
        await cpu_ms_per_request(target, "follow", 50, args.concurrency)
    for round_no in range(args.rounds):
        order = list(targets) if round_no % 2 == 0 else list(targets)[::-1]
        for kind in KINDS:
            for name in order:
                ms = await cpu_ms_per_request(targets[name], kind, args.n, args.concurrency)
                samples[f"{name} {kind}"].append(ms)
    return samples


@contextlib.contextmanager
def server_on(tree: str, workdir: Path) -> Iterator[tuple[str, int]]:
    """``checkout serve`` with ``PYTHONPATH=tree`` (this checkout when empty)."""
    saved = os.environ.get("PYTHONPATH")
    if tree:
        os.environ["PYTHONPATH"] = tree
    try:
        server = serve(workdir)
        started = server.__enter__()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield started
    finally:
        server.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="PYTHONPATH of server A (a tree's src)")
    parser.add_argument("--b", default="", help="PYTHONPATH of server B (default: this tree)")
    parser.add_argument("--n", type=int, default=400, help="requests per kind, round, server")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp: Callable[[], str] = lambda: stack.enter_context(tempfile.TemporaryDirectory())  # noqa: E731
        a = stack.enter_context(server_on(args.a, Path(tmp())))
        b = stack.enter_context(server_on(args.b, Path(tmp())))
        targets = {"A": Target(*a), "B": Target(*b)}
        samples = asyncio.run(run(targets, args))
    print(f"{'kind':<12} {'A ms CPU/request':>17} {'B ms CPU/request':>17} {'B/A':>6}")
    result: dict[str, Any] = {"n": args.n, "rounds": args.rounds}
    for kind in KINDS:
        a_ms = statistics.median(samples[f"A {kind}"])
        b_ms = statistics.median(samples[f"B {kind}"])
        print(f"{kind:<12} {a_ms:>17.3f} {b_ms:>17.3f} {b_ms / a_ms:>6.2f}")
        result[f"{kind}_ms_a"] = round(a_ms, 3)
        result[f"{kind}_ms_b"] = round(b_ms, 3)
    print_report(result)


if __name__ == "__main__":
    main()
