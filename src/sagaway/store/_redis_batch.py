"""The Redis store's transport: one pipelined round trip per batch of concurrent commands.

Kept apart from ``redis`` so the store reads as what each transition sends, and this as how it
is sent: redis-py's connection classes, the client's options and the batching live here. The
``redis`` module docstring says why the client never retries, why replies have one deadline per
batch, and what the batching measured.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.connection import parse_url as parse_redis_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ResponseError
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

from sagaway.errors import StoreError

__all__ = ["HEALTH_CHECK_INTERVAL", "REPLY_TIMEOUT", "Batcher", "command_client"]

# Replies owed but none received for this long: the batch fails with StoreError and its
# connection is dropped, so a hung server cannot hang every saga forever.
REPLY_TIMEOUT = 30.0
# A pooled connection idle this long is PINGed before a batch is sent on it.
HEALTH_CHECK_INTERVAL = 30


class _HiredisPacking:
    """Commands packed by hiredis (redis-py's own ``HiredisRespSerializer``, which its sync
    connections use; its asyncio ones pack in Python, which took a fifth of the benchmark's CPU
    time)."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


class _HiredisConnection(_HiredisPacking, Connection):
    pass


class _HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


def command_client(url: str, prefix: str) -> Redis:
    """The hot path's client: never retries a batch (the ``redis`` module docstring says why);
    named, so an operator sees in CLIENT LIST which connection is the saga store's. URL
    parameters win."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": None,  # one deadline per batch instead (Batcher)
        "socket_connect_timeout": 10.0,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "client_name": "".join(c if c.isalnum() else "-" for c in f"sagaway-{prefix}"),
        # Redis Enterprise's maintenance events: off, so that the pool checks a connection it
        # hands out (a connection the server closed while idle is replaced before a batch).
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    options.update(parse_redis_url(url))
    if HIREDIS_AVAILABLE:
        ssl = options.get("connection_class") is SSLConnection
        options["connection_class"] = _HiredisSSLConnection if ssl else _HiredisConnection
    return Redis.from_pool(ConnectionPool(**options))


class Batcher:
    """One round trip per batch of concurrent commands, on a redis-py client.

    ``submit`` queues a command and returns its future. The first command queued while no batch
    is being sent starts a task; the task runs once the event loop has run everything else that
    was ready, so it finds every command issued in that turn and sends them as one
    ``pipeline(transaction=False)``. Commands queued while a batch is in flight make the next
    batch. A reply error goes to its own caller (as redis-py's ``ResponseError``); a connection
    error fails every caller of the batch with ``StoreError``."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._queue: list[tuple[tuple[str, ...], asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.closed = False
        self.batches = 0  # batches and commands sent (benchmarks: commands / batches)
        self.commands = 0

    def submit(self, command: tuple[str, ...]) -> asyncio.Future[Any]:
        if self.closed:
            raise StoreError("redis: the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if self._sender is None:
            self._sender = loop.create_task(self._run(), name="sagaway-redis-batch")
        return future

    async def _run(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            # Here, not in a done callback (a loop turn later): a command queued in between
            # would find a sender that is not going to take it.
            self._sender = None

    async def _send(self, batch: list[tuple[tuple[str, ...], asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.commands += len(batch)
        pipe = self.client.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            why = f"no reply in {REPLY_TIMEOUT:.0f} s" if isinstance(exc, TimeoutError) else exc
            for _, future in batch:
                if not future.done():
                    error = StoreError(f"redis: {why}")
                    error.__cause__ = exc
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise  # cancelled (the loop is shutting down): the callers have their error
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller was cancelled; the command ran anyway
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Send what is queued and wait for its replies; refuse new commands."""
        self.closed = True
        if self._sender is not None:
            await asyncio.shield(self._sender)
