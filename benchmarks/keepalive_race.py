"""How often a request on a reused keep-alive connection dies before any answer, when the server
closes idle connections at about the moment the client's pool reuses one.

uvicorn (as ``checkout serve`` and ``checkout participant`` run it: uvloop, httptools) closes a
keep-alive connection idle for ``timeout_keep_alive`` seconds (``SAGAWAY_KEEP_ALIVE_SECONDS``).
A client pool keeps an idle connection for its own expiry (httpx 5 s, aiohttp 15 s) and reuses
it until then. If the server's close and the client's reuse cross, the request goes out on a
closed connection: ``ServerDisconnectedError`` / ``Connection reset by peer`` (aiohttp),
``ReadError`` / ``RemoteProtocolError`` (httpx), and the server logs nothing (it never read a
request). A server whose keep-alive outlasts the client's expiry never closes a connection the
client may still reuse.

Each case: one client pool opens N connections (N concurrent POSTs to a bare route), then N
tasks each sleep an idle time drawn uniformly from the band and POST again on a pooled
connection; repeated ``--rounds`` times. The server runs in a process of its own. A table, then
one JSON line.

    python benchmarks/keepalive_race.py [--n 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import random
import socket
import time
from typing import Any

# (client, server keep-alive s, idle band s): the suspect (5 s server, reuse at ~5 s), the
# same pool well inside the server's limit, and the server's keep-alive above the pools'.
CASES = [
    ("aiohttp", 5, (4.95, 5.05)),
    ("aiohttp", 5, (4.0, 4.9)),
    ("aiohttp", 75, (4.95, 5.05)),
    ("aiohttp", 75, (14.9, 15.0)),
    ("httpx", 5, (4.95, 5.0)),
    ("httpx", 75, (4.95, 5.0)),
]


def serve(sock: socket.socket, keep_alive: int) -> None:
    import uvicorn
    import uvloop
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def orders(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/orders", orders, methods=["POST"])])
    config = uvicorn.Config(
        app, log_level="warning", timeout_keep_alive=keep_alive, lifespan="off", http="httptools"
    )
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


async def one_round(url: str, client: str, n: int, band: tuple[float, float]) -> list[str]:
    import aiohttp
    import httpx

    outcomes: list[str] = []
    async with PooledClient(client, url, n) as post:
        assert all(s == 201 for s in await asyncio.gather(*(post() for _ in range(n))))

        async def again() -> None:
            await asyncio.sleep(random.uniform(*band))
            try:
                outcomes.append("ok" if await post() == 201 else "status")
            except (aiohttp.ClientError, httpx.HTTPError) as exc:
                outcomes.append(type(exc).__name__)

        await asyncio.gather(*(again() for _ in range(n)))
    return outcomes


class PooledClient:
    """``post()`` on one pooled client of the given kind, with its default idle expiry."""

    def __init__(self, kind: str, url: str, n: int) -> None:
        self.kind, self.url, self.n = kind, url, n
        self.client: Any = None

    async def __aenter__(self) -> Any:
        if self.kind == "aiohttp":
            import aiohttp

            self.client = aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=self.n)
            )

            async def post() -> int:
                async with self.client.post("/orders", json={}) as response:
                    await response.read()
                    return int(response.status)

            return post
        import httpx

        limits = httpx.Limits(max_connections=self.n, max_keepalive_connections=self.n)
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)

        async def post_httpx() -> int:
            return (await self.client.post("/orders", json={})).status_code

        return post_httpx

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "aiohttp":
            await self.client.close()
        else:
            await self.client.aclose()


def run_case(
    client: str, keep_alive: int, band: tuple[float, float], n: int, rounds: int
) -> dict[str, Any]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    server = multiprocessing.Process(target=serve, args=(sock, keep_alive), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 30
        while True:  # the server's start: nothing to wait on but its port answering
            try:
                socket.create_connection(sock.getsockname(), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        outcomes: collections.Counter[str] = collections.Counter()
        for _ in range(rounds):
            outcomes.update(asyncio.run(one_round(url, client, n, band)))
    finally:
        server.terminate()
        server.join(10)
        sock.close()
    failed = sum(v for k, v in outcomes.items() if k != "ok")
    return {
        "client": client,
        "keep_alive_s": keep_alive,
        "idle_s": list(band),
        "requests": sum(outcomes.values()),
        "failed": failed,
        "outcomes": dict(outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="connections per round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = [run_case(c, k, b, args.n, args.rounds) for c, k, b in CASES]
    print(f"{'client':<8} {'keep-alive s':>12} {'idle s':>12} {'requests':>9} {'failed':>7}  how")
    for r in results:
        band = f"{r['idle_s'][0]}-{r['idle_s'][1]}"
        how = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()) if k != "ok")
        print(
            f"{r['client']:<8} {r['keep_alive_s']:>12} {band:>12} {r['requests']:>9} "
            f"{r['failed']:>7}  {how}"
        )
    load = os.getloadavg()[0]
    print(json.dumps({"benchmark": "keepalive_race", "load1": load, "cases": results}))


if __name__ == "__main__":
    main()
