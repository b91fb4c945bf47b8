"""HTTP transport: a remote step is a ``POST {base}/saga/commands/{command}`` to its participant.

Every call carries ``Idempotency-Key: <message_id>`` (the participant's dedupe key: a retry
after a timeout or a lost reply gets the recorded reply, never a second effect) and the
command's ``headers`` (``traceparent`` when tracing is on). The outcome maps onto the port:

* 2xx: the reply in the body;
* 4xx with a message (``{"detail": "..."}``, FastAPI's shape, or a text body): a business
  failure, ``Reply.failure(message)``: the step fails at once and the saga compensates. 401,
  403, 408, 425 and 429 are the exceptions: the server did not process the request, so they
  are transient (``token=`` sends ``Authorization: Bearer <token>``);
* 5xx, a connection refused or dropped: ``TransportError``; a connect or read timeout (or the
  call's ``timeout``): ``TimeoutError``. Both are transient: the runner retries with the same
  ``message_id``, then treats the step as uncertain.

The client is aiohttp, chosen by measurement (``benchmarks/http_client.py --n 5000
--concurrency 32 --rounds 2``: both clients against one uvicorn participant with a SQLite inbox,
on this 2-core machine shared with other work): aiohttp 474 calls/s, p50 59 ms, p99 279 ms,
203 us of client CPU per call; httpx 63 calls/s, p50 283 ms, p99 2586 ms, 3129 us per call.
httpx's connection pool spends milliseconds of CPU per request once 32 requests share it, and
on a machine where the engine and the participants share two cores the client's CPU per call
is what every remote step pays. One pooled session per dispatcher, keep-alive connections per
participant, explicit connect/read timeouts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from sagaway.transport.base import Command, Dispatcher, Reply, TransportError

__all__ = ["HttpDispatcher"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
# The server did not process the request: retry. 401 and 403 among them: a command refused for
# its credentials was never looked at, and a saga must not compensate for a wrong token.
_TRANSIENT_4XX = {401, 403, 408, 425, 429}


class HttpDispatcher(Dispatcher):
    """Calls participants over HTTP. ``urls``: participant name -> base URL
    (``{"inventory": "http://127.0.0.1:8002"}``); ``prefix``: where their
    ``participant_router`` is mounted. ``connect_timeout``/``read_timeout``: seconds (a call's
    own ``timeout`` bounds the whole call as well). ``max_connections``: the pool's size,
    across participants. ``token``: sent as ``Authorization: Bearer <token>`` (the participant
    router's ``require_bearer``)."""

    parks = False

    def __init__(
        self,
        urls: Mapping[str, str] | None = None,
        *,
        prefix: str = "/saga",
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
        max_connections: int = 100,
        token: str | None = None,
    ) -> None:
        self.urls: dict[str, str] = {}
        for name, url in (urls or {}).items():
            self.add(name, url)
        self.prefix = prefix.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    def add(self, participant: str, url: str) -> None:
        """Route ``participant``'s commands to ``url``."""
        self.urls[participant] = url.rstrip("/")

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections
            )
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                json_serialize=_dumps,
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, command: Command, timeout: float | None) -> Reply:
        base = self.urls.get(command.participant)
        if base is None:
            return Reply.failure(
                command,
                f"no URL for participant {command.participant!r} "
                f"(known: {', '.join(sorted(self.urls)) or 'none'})",
            )
        if self._session is None:
            await self.open()
        session = self._session
        assert session is not None
        url = f"{base}{self.prefix}/commands/{command.command}"
        headers = {
            **command.headers,
            **self._auth,
            IDEMPOTENCY_HEADER: command.message_id,
            "Content-Type": "application/json",
        }
        body = _dumps(command.to_json()).encode()
        try:
            async with asyncio.timeout(timeout):
                async with session.post(url, data=body, headers=headers) as response:
                    status = response.status
                    raw = await response.read()
        except aiohttp.ServerTimeoutError as exc:  # connect or read timeout (a TimeoutError)
            raise TimeoutError(f"{command.topic} to {base}: {exc or 'timed out'}") from exc
        except TimeoutError:
            raise TimeoutError(f"{command.topic} to {base}: no reply in {timeout}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{command.topic} to {base}: {type(exc).__name__}: {exc}") from exc
        return _reply(command, base, status, raw)


def _reply(command: Command, base: str, status: int, raw: bytes) -> Reply:
    if 200 <= status < 300:
        try:
            data = json.loads(raw)
            return Reply.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            # The participant processed the command (2xx) but its answer is unreadable: a bug
            # on its side. Transient, so the retry reads the recorded reply again; an operator
            # sees the message in the saga's history.
            raise TransportError(
                f"{command.topic} to {base}: HTTP {status} with a body that is not a reply: {exc}"
            ) from exc
    text = raw.decode("utf-8", errors="replace")
    if 400 <= status < 500 and status not in _TRANSIENT_4XX:
        return Reply.failure(command, _message(text) or f"HTTP {status} from {command.topic}")
    raise TransportError(
        f"{command.topic} to {base}: HTTP {status}" + (f": {m}" if (m := _message(text)) else "")
    )


def _message(text: str) -> str:
    """The error message in a response body: FastAPI's ``detail`` (a string, or a list of
    validation errors), else the text itself, shortened."""
    text = text.strip()
    if not text:
        return ""
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text[:500]
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for error in detail[:3]:
            if isinstance(error, dict):
                loc = ".".join(str(p) for p in error.get("loc", ()))
                parts.append(f"{loc}: {error.get('msg', '')}" if loc else str(error.get("msg")))
        if parts:
            return "; ".join(parts)
    return text[:500]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
