"""One auto-pipelined Redis connection: the transport under the Redis saga store.

Why not redis-py's connections for the hot path: redis-py sends each command on a pooled
connection and reads its reply line by line through several layers, which at tens of thousands
of transitions a second costs more Python time than the engine itself. Here:

* ``call`` appends the command's bytes to an output buffer and returns a future; the first call
  of an event-loop turn schedules one ``_flush`` callback, which writes everything buffered in
  one ``transport.write``. Every command issued in the same turn (all the sagas that just
  resumed) travels together, and nothing waits for the previous batch's replies: Redis runs one
  batch while Python is busy with the replies of the last.
* One reader task reads whatever bytes arrived (many replies at once), parses them with a small
  RESP2 parser and resolves the futures in order (Redis answers a connection in order).

Each command stays atomic on its own (a Lua script is one command); pipelining only shares the
round trip. If the connection breaks, every call in flight fails with ``StoreError`` (its write
may or may not have been applied: the engine resumes such a saga from the log) and the next call
reconnects. A watchdog aborts the connection when replies stop coming for ``timeout`` seconds,
so a hung server cannot hang every saga.

redis-py still parses the URL (same options as the rest of the store) and carries pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError, ResponseError

from sagaway.errors import StoreError

__all__ = ["RedisPipe", "pack"]


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


def pack(command: tuple[str, ...] | list[str]) -> bytes:
    """RESP-encode one command of str arguments. Built as one str and encoded once: an
    ASCII argument's length in bytes is its length in characters (the common case, checked
    by ``isascii``, which is fast), so only other arguments are encoded twice."""
    parts = [f"*{len(command)}\r\n"]
    append = parts.append
    for arg in command:
        if arg.isascii():
            append(f"${len(arg)}\r\n{arg}\r\n")
        else:
            append(f"${len(arg.encode())}\r\n{arg}\r\n")
    return "".join(parts).encode()


def _error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at ``pos``: ``(value, next_pos)``; bulk strings decoded as UTF-8, an
    error reply returned (not raised) as a ``ResponseError``."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            raise _Incomplete
        return buf[end + 2 : stop].decode(), stop + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 42:  # * array
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(size):
            value, pos = _parse(buf, pos)
            items.append(value)
        return items, pos
    if kind == 43:  # + simple string
        return buf[pos + 1 : end].decode(), end + 2
    if kind == 45:  # - error
        return _error(buf[pos + 1 : end].decode()), end + 2
    raise StoreError(f"redis: unexpected reply type {chr(kind)!r}")


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "0"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


class RedisPipe:
    """An auto-pipelined connection to the server of a ``redis://``/``rediss://`` URL."""

    def __init__(self, url: str, *, name: str = "sagaway", timeout: float = 30.0) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._ssl = _ssl_context(options) if "connection_class" in options else None
        self._connect_timeout = float(options.get("socket_connect_timeout") or 10.0)
        self._handshake: list[list[str]] = []
        if options.get("password") is not None:
            user = [options["username"]] if options.get("username") else []
            self._handshake.append(["AUTH", *user, options["password"]])
        if int(options.get("db") or 0):
            self._handshake.append(["SELECT", str(options["db"])])
        # Named, so an operator sees in CLIENT LIST which connection is the saga store's.
        self._handshake.append(
            ["CLIENT", "SETNAME", "".join(c if c.isalnum() else "-" for c in name)]
        )
        self.timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._out: list[bytes] = []  # not yet written, in call order
        self._unsent: list[asyncio.Future[Any]] = []  # their futures
        self._inflight: deque[asyncio.Future[Any]] = deque()  # written, awaiting replies
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._progress = 0  # bumped on every read: the watchdog's sign of life
        self._closed = False
        self._last_error: BaseException | None = None
        self.writes = 0  # flushes and commands sent (benchmarks: commands / writes)
        self.commands = 0

    def call(self, *command: str) -> asyncio.Future[Any]:
        """Queue one command (str arguments); the future gets its reply (an error reply as
        ResponseError)."""
        if self._closed:
            raise StoreError("redis: the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._out.append(pack(command))
        self._unsent.append(future)
        if self._writer is not None:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif self._connecting is None:
            self._connecting = loop.create_task(self._connect(), name="sagaway-redis-connect")
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._writer is None or not self._out:
            return
        self._writer.write(b"".join(self._out))
        self.writes += 1
        self.commands += len(self._unsent)
        self._inflight.extend(self._unsent)
        self._out, self._unsent = [], []

    async def connect(self) -> None:
        """Connect now (``call`` also connects lazily); raises StoreError if it cannot."""
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            await asyncio.shield(self._connecting)
            if self._writer is None:
                raise StoreError(
                    f"redis: cannot connect to {self._host}:{self._port}: {self._last_error}"
                )

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ssl),
                self._connect_timeout,
            )
            buf = b""
            if self._handshake:
                writer.write(b"".join(pack(c) for c in self._handshake))
                replies: list[Any] = []
                while len(replies) < len(self._handshake):
                    data = await asyncio.wait_for(reader.read(1 << 16), self._connect_timeout)
                    if not data:
                        raise ConnectionError("connection closed during the handshake")
                    buf += data
                    with contextlib.suppress(_Incomplete):
                        while len(replies) < len(self._handshake):
                            value, pos = _parse(buf, 0)
                            replies.append(value)
                            buf = buf[pos:]
                for reply in replies:
                    if isinstance(reply, ResponseError):
                        raise reply
        except Exception as exc:
            self._connecting = None
            self._last_error = exc
            self._fail(self._unsent, exc)
            self._out, self._unsent = [], []
            return
        self._writer = writer
        self._connecting = None
        self._tasks = [
            asyncio.get_running_loop().create_task(self._read(reader, writer, buf)),
            asyncio.get_running_loop().create_task(self._watch(writer)),
        ]
        self._flush()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buf: bytes
    ) -> None:
        inflight = self._inflight
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("connection closed by the server")
                self._progress += 1
                buf = buf + data if buf else data
                pos = 0
                while inflight:
                    try:
                        value, pos_next = _parse(buf, pos)
                    except _Incomplete:
                        break
                    pos = pos_next
                    future = inflight.popleft()
                    if future.done():  # the caller was cancelled; the command ran anyway
                        continue
                    if isinstance(value, ResponseError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
                buf = buf[pos:]
        except Exception as exc:
            self._broken(writer, exc)

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        """Abort the connection when replies are owed but none came for ``timeout`` seconds."""
        seen, idle = self._progress, 0.0
        while True:
            await asyncio.sleep(1.0)  # a watchdog's tick, not synchronisation
            if not self._inflight or self._progress != seen:
                seen, idle = self._progress, 0.0
                continue
            idle += 1.0
            if idle >= self.timeout:
                self._broken(writer, TimeoutError(f"no reply from Redis in {self.timeout:.0f} s"))
                return

    def _broken(self, writer: asyncio.StreamWriter, exc: BaseException) -> None:
        """Drop the connection; fail what was sent on it (unknown outcome); reconnect lazily."""
        if self._writer is not writer:
            return
        self._writer = None
        writer.transport.abort()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        failed = list(self._inflight)
        self._inflight.clear()
        self._fail(failed, exc)
        if self._unsent and not self._closed:  # queued after the loss: send on a new connection
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    @staticmethod
    def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
        error = exc if isinstance(exc, StoreError) else StoreError(f"redis: {exc}")
        for future in futures:
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Wait for every reply owed, then disconnect."""
        self._closed = True
        if self._connecting is not None:
            with contextlib.suppress(Exception):
                await self._connecting
        pending = [*self._inflight, *self._unsent]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout)
        writer, self._writer = self._writer, None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._fail([*self._inflight, *self._unsent], ConnectionError("store closed"))
