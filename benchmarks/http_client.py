"""httpx or aiohttp for the HTTP dispatcher: the same saga commands through both, measured.

Starts one participant server (uvicorn, ``participant_router``, a SQLite inbox in a temporary
directory) as a subprocess, then sends ``--n`` commands at concurrency ``--concurrency``
through each client, the way ``HttpDispatcher`` sends them (one pooled client, JSON body,
``Idempotency-Key`` + ``traceparent`` headers, explicit connect/read timeouts, every command a
fresh message_id so the participant really writes its inbox). The clients alternate for
``--rounds`` rounds (A B, B A, ...) against the same server; the best round of each is kept::

    python benchmarks/http_client.py --n 5000 --concurrency 32 --rounds 2
    python benchmarks/http_client.py --bare --clients aiohttp   # the floor: a bare FastAPI route

Reported per client: calls/s, p50/p99 latency, and the client process's CPU per call (user +
system, this process only): on a 2-core machine shared with the server, the client's CPU per
call is what an engine pays for every remote step. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from procs import cpu_seconds
from report import latency_ms, percentile

PARTICIPANT = "bench"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


def serve_forever(db: str, bare: bool) -> None:
    """The server side (``--serve``): one participant on a socket bound here, port printed
    (``bare``: a plain FastAPI route that reads the body and answers a fixed reply)."""
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from sqlalchemy.engine import Connection

    from sagaway.participant import Participant
    from sagaway.participant.http import participant_router

    app = FastAPI()
    if bare:
        echoed = ("message_id", "saga_id", "step", "phase", "attempt", "participant")

        async def run_command(request: Request) -> Response:
            body = json.loads(await request.body())
            reply = {**{k: body[k] for k in echoed}, "ok": True, "output": {"reserved": 1}}
            return Response(json.dumps(reply).encode(), media_type="application/json")

        # A plain Starlette route: no FastAPI parameter machinery, the least a route can do.
        app.router.add_route("/saga/commands/{command}", run_command, methods=["POST"])

    else:
        participant = Participant(PARTICIPANT, f"sqlite:///{db}")
        participant.create_inbox()

        @participant.handler("reserve")
        def reserve(conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
            return {"reserved": payload["quantity"]}

        app.include_router(participant_router(participant))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # connections wait in the backlog until uvicorn serves: no start race
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def command_body(saga_id: str) -> tuple[str, bytes]:
    message_id = f"{saga_id}:reserve:forward"
    body = {
        "message_id": message_id,
        "saga_id": saga_id,
        "saga_name": "checkout",
        "step": "reserve",
        "phase": "forward",
        "attempt": 1,
        "participant": PARTICIPANT,
        "command": "reserve",
        "payload": {"order_id": saga_id, "sku": "widget", "quantity": 2},
        "forward_key": None,
        "headers": {"traceparent": TRACEPARENT},
    }
    return message_id, json.dumps(body, separators=(",", ":")).encode()


@asynccontextmanager
async def httpx_client(concurrency: int) -> AsyncIterator[Post]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(10.0, connect=2.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            response = await client.post(url, content=body, headers=headers)
            response.read()
            return response.status_code

        yield post


@asynccontextmanager
async def aiohttp_client(concurrency: int) -> AsyncIterator[Post]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        yield post


@asynccontextmanager
async def dispatcher_client(concurrency: int) -> AsyncIterator[Post]:
    """Not a candidate: the chosen client as the engine uses it (``HttpDispatcher.call``),
    to show what the dispatcher adds over the bare client (building the command's JSON,
    decoding the reply)."""
    from sagaway.state import Phase
    from sagaway.transport.base import Command
    from sagaway.transport.http import HttpDispatcher

    async with HttpDispatcher(max_connections=concurrency) as dispatcher:

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            if PARTICIPANT not in dispatcher.urls:
                dispatcher.add(PARTICIPANT, url.split("/saga/")[0])
            data = json.loads(body)
            data["phase"] = Phase(data["phase"])
            reply = await dispatcher.call(Command(**data), 30.0)
            return 200 if reply.ok else 409

        yield post


CLIENTS = {"httpx": httpx_client, "aiohttp": aiohttp_client, "dispatcher": dispatcher_client}
CANDIDATES = ("httpx", "aiohttp")


async def run_client(
    kind: str, base: str, n: int, concurrency: int, warmup: int, server_pid: int
) -> dict[str, Any]:
    url = f"{base}/saga/commands/reserve"
    latencies: list[float] = []
    errors = 0
    async with CLIENTS[kind](concurrency) as post:

        async def one() -> None:
            nonlocal errors
            message_id, body = command_body(uuid.uuid4().hex)
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": message_id,
                "traceparent": TRACEPARENT,
            }
            started = time.perf_counter()
            try:
                status = await post(url, body, headers)
            except Exception as exc:  # counted, not fatal: a client that errs loses on it
                print(f"{kind}: {type(exc).__name__}: {exc}", file=sys.stderr)
                errors += 1
                return
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors += 1

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        async def batch(total: int) -> None:
            share, extra = divmod(total, concurrency)
            await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))

        await batch(warmup)
        latencies.clear()
        errors = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        server0 = cpu_seconds(server_pid)
        await batch(n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        server_cpu = cpu_seconds(server_pid) - server0
    return {
        "client": kind,
        "calls_per_s": round(n / wall, 1),
        **latency_ms(latencies),
        "client_cpu_us_per_call": round(cpu / n * 1e6, 1),
        "server_cpu_us_per_call": round(server_cpu / n * 1e6, 1),
        "errors": errors,
        "p90_ms": round(percentile(latencies, 0.9) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated, of: " + ", ".join(CLIENTS)
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="the server is a bare FastAPI route (no participant, no inbox): the HTTP floor",
    )
    parser.add_argument("--serve", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_forever(args.serve, args.bare)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                str(Path(tmp) / "bench.db"),
                *(["--bare"] if args.bare else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [os.environ.get("PYTHONPATH"), str(Path(__file__).parent)])
                ),
            },
        )
        try:
            assert server.stdout is not None
            base = f"http://127.0.0.1:{int(server.stdout.readline())}"
            best: dict[str, dict[str, Any]] = {}
            order = [kind for kind in args.clients.split(",") if kind]
            for round_no in range(args.rounds):
                for kind in order if round_no % 2 == 0 else order[::-1]:
                    result = asyncio.run(
                        run_client(kind, base, args.n, args.concurrency, args.warmup, server.pid)
                    )
                    print(json.dumps({"round": round_no + 1, **result}), file=sys.stderr)
                    if kind not in best or result["calls_per_s"] > best[kind]["calls_per_s"]:
                        best[kind] = result
        finally:
            server.terminate()
            server.wait(10)
    print(
        f"{'client':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'client CPU us/call':>19} {'server CPU us/call':>19}"
    )
    for kind, r in best.items():
        print(
            f"{kind:<10} {r['calls_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} "
            f"{r['client_cpu_us_per_call']:>19} {r['server_cpu_us_per_call']:>19}"
        )
    candidates = [best[kind] for kind in CANDIDATES if kind in best]
    winner = max(candidates, key=lambda r: r["calls_per_s"])["client"] if candidates else None
    print(
        json.dumps(
            {
                "benchmark": "http_client",
                "n": args.n,
                "concurrency": args.concurrency,
                "rounds": args.rounds,
                "bare": args.bare,
                "winner": winner,
                **{kind: best[kind] for kind in best},
            }
        )
    )


if __name__ == "__main__":
    main()
