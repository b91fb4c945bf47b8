"""What the web UI's live updates cost the server: CPU per order with 0 vs N open live pages.

Starts a checkout server (demo mode) on a fresh SQLite file in a temporary directory (the same
seeded database as ``http_checkout.py --serve``), then places orders at a fixed target rate
for ``--seconds``, once with no page open (A) and once with ``--pages`` open pages (B),
interleaved for ``--rounds`` rounds (A B, B A, A B...) on the same server::

    python benchmarks/ui_live_cost.py --rate 500 --seconds 10 --rounds 3 --pages 50

Who places the orders (``--orders``):

* ``inprocess`` (default): the server is ``ui_live_server.py``, ``checkout serve``'s app
  (same ``create_app``, uvicorn, loop, engine, default metrics and INFO saga logs) with an
  order source inside it: each order goes through ``POST /orders``'s code after the HTTP
  layer (``OrderRequest`` validation, ``place``: order row, saga, wait, ``order_out``). An
  HTTP load generator on this 2-core machine competes with the server for the cores and
  reached 70-190 orders/s; this way 500/s is reachable. **In** the measured CPU: the orders
  (minus their HTTP parsing and response encoding), the sagas, their logs and metrics, and
  everything the open pages cost the server (their HTTP requests, streams, renders, store
  reads). **Not in it**: the pages' client side (another process), per-order HTTP.
* ``http``: ``checkout serve`` itself, orders sent as ``POST /orders`` by this process (the
  measurement until 2026-11-26; its rate is capped by the machine, see above).

The open pages are real Server-Sent Events clients of the real app (aiohttp, in this process),
behaving like the browser's script (``sagaway.js``, ``shop.js``):

* saga pages (half of them; ``--saga-pages`` sets the share): each follows the saga of a
  fresh order on ``/ui/sagas/{id}/events`` (``timeline`` events, then ``end``), then the
  next fresh order's saga. One order in 20 is placed with ``wait=0`` (in both
  configurations, so the order load is the same) and its saga id handed to a waiting saga
  page (in process: written by the server to a pipe), which opens the stream while the saga
  runs; the other orders wait for their saga (``wait=10``) as the shop page does.
* saga list pages (30%): ``/ui/sagas/events``, whose ``saga-rows`` events carry the list's
  new rows (the page asks for nothing else).
* shop pages (the rest): ``/shop/events``, whose ``orders`` and ``stock`` events carry the new
  orders table and stock.

(Until 2026-11-26 the list streams only said ``changed`` and every page re-read its fragments
over HTTP: ``git log -p benchmarks/ui_live_cost.py`` has that version of the pages.)

The orders are placed open-loop (order i at ``start + i / rate``, at most ``--max-in-flight``
at once); when the machine cannot keep up, the achieved rate is lower: it is reported. The
server's CPU (user + system from /proc, over the timed window) is the number compared: ms per
order and % of one core, per configuration, and the extra that the pages cost. Prints a table,
then, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from http_checkout import _env, _seed, order_body, serve
from procs import cpu_seconds, paced, server_process
from report import print_report

FOLLOWED_EVERY = 20  # one order in 20 is posted with wait=0 and followed by a saga page


@dataclass
class Tally:
    """What the open pages received (events) and asked for (fragment reads)."""

    events: Counter[str] = field(default_factory=Counter)
    fetches: Counter[str] = field(default_factory=Counter)
    sagas_followed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The event names of a Server-Sent Events body (comments and ``retry`` skipped)."""
    name = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line == "":
            if name:
                yield name
            name = ""


async def list_page(session: aiohttp.ClientSession, url: str, tally: Tally, kind: str) -> None:
    """A list or shop page: follow its fragment stream (the events carry the HTML)."""
    async with session.get(url, timeout=aiohttp.ClientTimeout()) as response:
        if response.status != 200:
            tally.errors[f"{kind} page {response.status}"] += 1
            return
        async for name in sse_events(response):
            tally.events[f"{kind} {name}"] += 1


async def saga_page(
    session: aiohttp.ClientSession, sagas: asyncio.Queue[str], tally: Tally
) -> None:
    """A saga page: follow one fresh saga to its end, then the next one handed over."""
    while True:
        saga_id = await sagas.get()
        url = f"/ui/sagas/{saga_id}/events"
        async with session.get(url, timeout=aiohttp.ClientTimeout()) as response:
            if response.status != 200:
                tally.errors[f"saga page {response.status}"] += 1
                continue
            async for name in sse_events(response):
                tally.events[f"saga {name}"] += 1
        tally.sagas_followed += 1


@dataclass
class Window:
    pages: int
    orders: int
    seconds: float
    server_cpu_s: float
    http: Counter[str]
    tally: Tally

    @property
    def rate(self) -> float:
        return self.orders / self.seconds

    @property
    def cpu_ms_per_order(self) -> float:
        return self.server_cpu_s / self.orders * 1000 if self.orders else float("nan")

    @property
    def cpu_percent(self) -> float:
        return self.server_cpu_s / self.seconds * 100


async def measure(
    url: str,
    server_pid: int,
    pages: int,
    saga_share: float,
    rate: float,
    seconds: float,
    max_in_flight: int,
    first_order: int,
    followed: Followed | None = None,
) -> Window:
    """One timed window at ``rate`` orders/s with ``pages`` live pages open; ``followed``:
    the orders are placed by the server itself (``ui_live_server.py``), which hands the
    followed sagas' ids over a pipe."""
    saga_pages = round(pages * saga_share)
    list_pages = (pages - saga_pages) * 3 // 5
    shop_pages = pages - saga_pages - list_pages
    tally = Tally()
    http: Counter[str] = Counter()
    handoff: asyncio.Queue[str] = asyncio.Queue(maxsize=max(saga_pages, 1))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        readers = [
            *(asyncio.create_task(saga_page(session, handoff, tally)) for _ in range(saga_pages)),
            *(
                asyncio.create_task(list_page(session, "/ui/sagas/events", tally, "list"))
                for _ in range(list_pages)
            ),
            *(
                asyncio.create_task(list_page(session, "/shop/events", tally, "shop"))
                for _ in range(shop_pages)
            ),
        ]
        await asyncio.sleep(1.0 if pages else 0.0)  # let the streams open before timing
        if followed is not None:
            followed.handoff = handoff if saga_pages else None
            params = {
                "first": first_order,
                "rate": rate,
                "seconds": seconds,
                "max_in_flight": max_in_flight,
            }
            cpu_before = cpu_seconds(server_pid)
            async with session.post("/_bench/orders", params=params) as response:
                placed = await response.json()
            server_cpu = cpu_seconds(server_pid) - cpu_before
            followed.handoff = None
            http.update({"placed": placed["orders"], **placed["errors"]})
            await stop_pages(readers, tally)
            return Window(pages, placed["orders"], placed["seconds"], server_cpu, http, tally)
        slots = asyncio.Semaphore(max_in_flight)
        done = 0

        async def order(i: int) -> None:
            nonlocal done
            _, body = order_body(i)
            followed = i % FOLLOWED_EVERY == 0
            try:
                params = {"wait": 0 if followed else 10}
                async with session.post("/orders", params=params, json=body) as response:
                    payload = await response.json(content_type=None)
                    http[str(response.status)] += 1
                    if response.status in (201, 202):
                        done += 1
                        saga_id = payload.get("saga_id") if isinstance(payload, dict) else None
                        if followed and saga_pages and saga_id:
                            with contextlib.suppress(asyncio.QueueFull):
                                handoff.put_nowait(saga_id)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                http[type(exc).__name__] += 1
            finally:
                slots.release()

        cpu_before = cpu_seconds(server_pid)
        elapsed = await paced(order, first=first_order, rate=rate, seconds=seconds, slots=slots)
        server_cpu = cpu_seconds(server_pid) - cpu_before
        await stop_pages(readers, tally)
    return Window(pages, done, elapsed, server_cpu, http, tally)


async def stop_pages(readers: list[asyncio.Task[None]], tally: Tally) -> None:
    for reader in readers:
        reader.cancel()
    results = await asyncio.gather(*readers, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            tally.errors[type(result).__name__] += 1


@dataclass
class Followed:
    """The saga ids the in-process order source writes to its pipe, handed to the saga pages
    of the window being measured (dropped when none is open)."""

    handoff: asyncio.Queue[str] | None = None

    async def read(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        while line := await reader.readline():
            if self.handoff is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self.handoff.put_nowait(line.decode().strip())


@contextlib.contextmanager
def serve_inprocess(workdir: Path) -> Iterator[tuple[str, int, int]]:
    """``ui_live_server.py`` (checkout serve's app plus an order source) on a fresh seeded
    database; yields its URL, its pid and the read end of its followed-saga-ids pipe."""
    db_path = workdir / "sagaway.db"
    _seed(db_path)
    read_fd, write_fd = os.pipe()
    here = Path(__file__).parent
    env = {**os.environ, **_env(db_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here), env.get("PYTHONPATH")]))
    argv = [sys.executable, str(here / "ui_live_server.py"), str(write_fd)]
    try:
        with server_process(argv, env=env, pass_fds=(write_fd,)) as (url, proc):
            os.close(write_fd)  # the server's copy is the pipe's only writer now
            write_fd = -1
            print(f"server pid {proc.pid} at {url} on {db_path}", file=sys.stderr)
            yield url, proc.pid, read_fd
    finally:
        if write_fd >= 0:
            os.close(write_fd)


async def run(
    args: argparse.Namespace, url: str, server_pid: int, ids_fd: int | None
) -> list[Window]:
    windows: list[Window] = []
    next_order = 0
    share = args.saga_pages
    followed = None if ids_fd is None else Followed()
    if followed is not None and ids_fd is not None:
        reading = asyncio.create_task(followed.read(ids_fd))
    await measure(
        url, server_pid, 0, share, args.rate, args.warmup, args.max_in_flight, 10**9, followed
    )
    for round_no in range(args.rounds):
        order = (0, args.pages) if round_no % 2 == 0 else (args.pages, 0)
        for pages in order:
            window = await measure(
                url,
                server_pid,
                pages,
                share,
                args.rate,
                args.seconds,
                args.max_in_flight,
                next_order,
                followed,
            )
            next_order += window.orders + 1000
            windows.append(window)
            t = window.tally
            print(
                f"round {round_no + 1} pages {pages:>3}: {window.rate:7.1f} orders/s "
                f"server {window.cpu_ms_per_order:.3f} ms/order {window.cpu_percent:5.1f}% CPU"
                f" | events {sum(t.events.values())} fetches {sum(t.fetches.values())}"
                f" sagas followed {t.sagas_followed} http {dict(window.http)}",
                file=sys.stderr,
            )
    if followed is not None:
        reading.cancel()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="target orders per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each window")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs, order alternating")
    parser.add_argument("--pages", type=int, default=50, help="open live pages in B")
    parser.add_argument(
        "--saga-pages", type=float, default=0.5, help="share of the pages that are saga pages"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of orders first")
    parser.add_argument(
        "--max-in-flight", type=int, default=1000, help="orders placed, not yet answered"
    )
    parser.add_argument(
        "--orders",
        choices=["inprocess", "http"],
        default="inprocess",
        help="who places the orders: the server itself (ui_live_server.py) or POST /orders",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.orders == "http":
            with serve(Path(tmp)) as (url, server_pid):
                windows = asyncio.run(run(args, url, server_pid, None))
        else:
            with serve_inprocess(Path(tmp)) as (url, server_pid, ids_fd):
                windows = asyncio.run(run(args, url, server_pid, ids_fd))

    def of(pages: int) -> list[Window]:
        return [w for w in windows if w.pages == pages]

    header = f"{'pages':>6} {'orders/s':>9} {'server ms/order':>16} {'server CPU %':>13}"
    print(header)
    for w in windows:
        print(f"{w.pages:>6} {w.rate:>9.1f} {w.cpu_ms_per_order:>16.3f} {w.cpu_percent:>13.1f}")
    base, live = of(0), of(args.pages)
    ms_a = statistics.median(w.cpu_ms_per_order for w in base)
    ms_b = statistics.median(w.cpu_ms_per_order for w in live)
    pct_a = statistics.median(w.cpu_percent for w in base)
    pct_b = statistics.median(w.cpu_percent for w in live)
    events: Counter[str] = Counter()
    fetches: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    http: Counter[str] = Counter()
    for w in windows:
        events.update(w.tally.events)
        fetches.update(w.tally.fetches)
        errors.update(w.tally.errors)
        http.update(w.http)
    result: dict[str, Any] = {
        "orders": args.orders,
        "target_orders_per_s": args.rate,
        "pages": args.pages,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "orders_per_s_0_pages": round(statistics.median(w.rate for w in base), 1),
        "orders_per_s_with_pages": round(statistics.median(w.rate for w in live), 1),
        "server_cpu_ms_per_order_0_pages": round(ms_a, 3),
        "server_cpu_ms_per_order_with_pages": round(ms_b, 3),
        "cpu_per_order_ratio": round(ms_b / ms_a, 3),
        "server_cpu_percent_0_pages": round(pct_a, 1),
        "server_cpu_percent_with_pages": round(pct_b, 1),
        "extra_cpu_percent_points": round(pct_b - pct_a, 1),
        "sagas_followed": sum(w.tally.sagas_followed for w in live),
        "events": dict(sorted(events.items())),
        "fetches": dict(sorted(fetches.items())),
        "http": dict(sorted(http.items())),
        "page_errors": dict(errors),
    }
    print_report(result)


if __name__ == "__main__":
    main()
