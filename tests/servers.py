"""Real servers for the contract and integration suites: skip locally, fail in CI.

A test (or fixture) that needs PostgreSQL, Redis or RabbitMQ calls ``require_server(name,
check)`` first. ``check`` is any callable that raises when the server cannot be used; it runs
once per name per test session and its verdict is cached, so a missing server costs one timeout,
not one per test.

Why the CI switch: locally a developer without Redis should still get a green run of everything
else, so an unreachable server *skips*. In CI (``CI`` set to any true value, as ``.ci/run``
and CI services do) the servers are part of the environment, and a skip would hide a whole
backend silently, so the same condition *fails* the test with the reason. Every server-backed
test goes through this one rule; none has a skip of its own.

Importable as ``servers`` from any test module: ``tests/conftest.py`` puts ``tests/`` on
``sys.path``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = [
    "POSTGRES_URL",
    "RABBITMQ_URL",
    "REDIS_URL",
    "broker_to_ourselves",
    "drop_pg_schema",
    "durable_store_url",
    "fresh_pg_schema",
    "fresh_rabbit_vhost",
    "in_ci",
    "pg_schema_url",
    "postgres_check",
    "rabbitmq_check",
    "rabbitmqctl",
    "redis_check",
    "require_server",
    "tcp_check",
    "unique_pg_schema",
    "unique_redis_url",
]

_verdicts: dict[str, str] = {}  # name -> "" when reachable, else why not


_FALSE = {"", "0", "false", "no", "off", "n", "f"}


def in_ci() -> bool:
    """True when running under CI, where servers are mandatory: ``CI`` set to anything but an
    explicit false (``CI=1``, ``CI=true``, ``CI=True``, ``CI=yes`` ... all count). A skip that
    depends on how a CI service happens to spell "true" would hide a whole backend."""
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def tcp_check(host: str, port: int, timeout: float = 2.0) -> Callable[[], None]:
    """A check that only opens (and closes) a TCP connection: enough to tell "not running"."""

    def check() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    return check


def require_server(name: str, check: Callable[[], object]) -> None:
    """Skip the calling test when ``name`` is unusable (``check`` raised); fail it under CI."""
    verdict = _verdicts.get(name)
    if verdict is None:
        try:
            check()
        except Exception as exc:
            verdict = f"{type(exc).__name__}: {exc}"
        else:
            verdict = ""
        _verdicts[name] = verdict
    if not verdict:
        return
    message = f"{name} is not reachable ({verdict})"
    if in_ci():
        pytest.fail(
            f"{message}; CI={os.environ.get('CI')} requires it (see .ci/run)", pytrace=False
        )
    pytest.skip(f"{message}; start it to run these tests (CI=true turns this skip into a failure)")


# -- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "SAGAWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The test server (trust auth on loopback); each test isolates itself in a schema of its own."""


def postgres_check() -> None:
    import psycopg

    psycopg.connect(POSTGRES_URL, connect_timeout=3).close()


def unique_pg_schema(tag: str = "test") -> str:
    return f"sagaway_{tag}_{uuid.uuid4().hex[:12]}"


def pg_schema_url(schema: str, url: str = POSTGRES_URL) -> str:
    """``url`` with ``?schema=`` set: the saga store's tables go there."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


async def drop_pg_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        # A test that dies holding a lock in its schema fails its teardown, never hangs it.
        await conn.execute("SET lock_timeout = '60s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_pg_schema(tag: str = "test") -> AsyncIterator[str]:
    """A schema name no other test uses, dropped afterwards; skips/fails first without
    PostgreSQL (``require_server``)."""
    require_server("postgresql", postgres_check)
    name = unique_pg_schema(tag)
    try:
        yield name
    finally:
        await drop_pg_schema(name)


# -- Redis --------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("SAGAWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The test server; each test isolates itself under a key prefix of its own."""


def redis_check() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def unique_redis_url(tag: str = "test") -> str:
    """The test server's URL with a key prefix no other run uses."""
    return f"{REDIS_URL}?prefix=sagaway-{tag}-{uuid.uuid4().hex[:12]}"


# -- RabbitMQ -----------------------------------------------------------------------------------

RABBITMQ_URL = os.environ.get("SAGAWAY_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
"""The test broker; each test isolates itself in a vhost of its own (``fresh_rabbit_vhost``)."""

RABBITMQCTL = os.environ.get("SAGAWAY_TEST_RABBITMQCTL", "rabbitmqctl")


def rabbitmq_check() -> None:
    """The broker answers AMQP and ``rabbitmqctl`` works (the tests create vhosts with it)."""
    from urllib.parse import urlsplit

    parts = urlsplit(RABBITMQ_URL)
    tcp_check(parts.hostname or "127.0.0.1", parts.port or 5672)()
    subprocess.run([RABBITMQCTL, "-q", "list_vhosts"], check=True, capture_output=True, timeout=30)


async def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    """Run ``rabbitmqctl`` (each call starts an Erlang VM: about a second), ``stdin`` its
    input (a file path would be read by the broker's user, not ours)."""
    proc = await asyncio.create_subprocess_exec(
        RABBITMQCTL,
        "-q",
        *args,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await proc.communicate(None if stdin is None else stdin.encode())
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {out.decode(errors='replace')}")
    return out.decode()


_vhost_deletions: list[subprocess.Popen[bytes]] = []


def _reap_vhost_deletions() -> None:
    for proc in _vhost_deletions:
        proc.wait(timeout=60)


BROKER_LOCK = os.environ.get("SAGAWAY_TEST_BROKER_LOCK", "/tmp/sagaway-test-broker.lock")
"""A file lock shared by every test process on this machine (pytest-xdist workers, other
worktrees' runs): a test using the broker holds it shared, a test that stops the broker holds
it exclusively (``broker_to_ourselves``), so no test ever sees the broker stopped under it."""


class _BrokerLock:
    """This process's hold on ``BROKER_LOCK``: shared while any of its vhosts lives, exclusive
    inside ``broker_to_ourselves``. One file descriptor: ``flock`` converts its lock in place."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._users = 0
        self._exclusive = False

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(BROKER_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        return self._fd

    async def _set(self, operation: int) -> None:
        # In a thread: the wait can be long, and the test's own tasks keep running meanwhile.
        await asyncio.to_thread(fcntl.flock, self._descriptor(), operation)

    async def share(self) -> None:
        self._users += 1
        if self._users == 1 and not self._exclusive:
            await self._set(fcntl.LOCK_SH)

    async def unshare(self) -> None:
        self._users -= 1
        if self._users == 0 and not self._exclusive:
            await self._set(fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        assert not self._exclusive, "broker_to_ourselves does not nest"
        await self._set(fcntl.LOCK_EX)
        self._exclusive = True
        try:
            yield
        finally:
            self._exclusive = False
            await self._set(fcntl.LOCK_SH if self._users else fcntl.LOCK_UN)


_broker_lock = _BrokerLock()


@contextlib.asynccontextmanager
async def broker_to_ourselves() -> AsyncIterator[None]:
    """Around a test that stops the broker (``rabbitmqctl stop_app``): waits until no other
    test process uses it, and keeps them waiting (``BROKER_LOCK``) until the block ends. Enter
    it first, before the test's vhost, so the test runs as it would alone."""
    async with _broker_lock.exclusive():
        require_server("rabbitmq", rabbitmq_check)
        try:
            yield
        finally:
            await _broker_back()


async def _broker_back(budget: float = 120.0) -> None:
    """Until the broker answers again (AMQP, and the management API when in use), so the test
    that stopped and started it hands the next ones a broker as they expect it."""
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(RABBITMQ_URL)
    amqp = tcp_check(parts.hostname or "127.0.0.1", parts.port or 5672, timeout=1.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while True:
        try:
            await asyncio.to_thread(amqp)
            if _api_up:
                async with _api_client(timeout=1) as client:
                    (await client.get(f"{RABBITMQ_API}/whoami")).raise_for_status()
            return
        except (OSError, httpx.HTTPError):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.1)  # polling a server's start-up: no event to wait on


@contextlib.asynccontextmanager
async def fresh_rabbit_vhost(tag: str = "test") -> AsyncIterator[str]:
    """The test broker's URL on a new vhost (guest may use it), deleted afterwards with
    everything in it; skips/fails first without RabbitMQ (``require_server``). Holds the
    broker lock shared meanwhile (see ``BROKER_LOCK``).

    The deletion runs in the background (``rabbitmqctl`` costs about a second a call) and is
    waited for when the test session's interpreter exits."""
    await _broker_lock.share()  # first: the broker may be stopped until then, on purpose
    try:
        require_server("rabbitmq", rabbitmq_check)
        async with _vhost(tag) as url:
            yield url
    finally:
        await _broker_lock.unshare()


RABBITMQ_API = os.environ.get("SAGAWAY_TEST_RABBITMQ_API", "http://127.0.0.1:15672/api")
"""The broker's management HTTP API (the ``rabbitmq_management`` plugin, which ``.ci/run``
enables): a vhost made or deleted through it costs milliseconds, through ``rabbitmqctl`` an
Erlang VM start (one to several seconds of CPU). Without the plugin, ``rabbitmqctl`` it is."""

_api_up: bool | None = None


async def _management_api() -> bool:
    """Whether ``RABBITMQ_API`` answers guest (asked once per process)."""
    global _api_up
    if _api_up is None:
        import httpx

        try:
            async with _api_client(timeout=5) as client:
                _api_up = (await client.get(f"{RABBITMQ_API}/whoami")).status_code == 200
        except httpx.HTTPError:
            _api_up = False
    return _api_up


def _api_client(timeout: float) -> Any:
    import httpx

    # Plain HTTP on loopback: verify=False spares loading the CA bundle (~50 ms of CPU).
    return httpx.AsyncClient(auth=("guest", "guest"), timeout=timeout, verify=False)


async def _api(method: str, path: str, body: object = None) -> None:
    async with _api_client(timeout=30) as client:
        response = await client.request(method, f"{RABBITMQ_API}{path}", json=body)
    if response.status_code not in (200, 201, 204):
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")


@contextlib.asynccontextmanager
async def _vhost(tag: str) -> AsyncIterator[str]:
    vhost = f"sagaway-{tag}-{uuid.uuid4().hex[:12]}"
    url = RABBITMQ_URL.rstrip("/") + "/" + vhost
    if await _management_api():
        name = quote(vhost, safe="")
        await _api("PUT", f"/vhosts/{name}", {})
        try:
            await _api("PUT", f"/permissions/{name}/guest", dict.fromkeys(_PERMISSIONS, ".*"))
            yield url
        finally:
            await _api("DELETE", f"/vhosts/{name}")
        return
    # The vhost and guest's permissions in one rabbitmqctl call (an Erlang VM start, about a
    # second of CPU), not two (add_vhost, set_permissions): every RabbitMQ test pays it.
    definitions = {
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": "guest", "vhost": vhost, **dict.fromkeys(_PERMISSIONS, ".*")}],
    }
    await rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(definitions))
    try:
        yield url
    finally:
        if not _vhost_deletions:
            atexit.register(_reap_vhost_deletions)
        _vhost_deletions.append(
            subprocess.Popen(  # noqa: ASYNC220 - started here, waited for at exit
                [RABBITMQCTL, "-q", "delete_vhost", vhost],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )


_PERMISSIONS = ("configure", "write", "read")


@contextlib.asynccontextmanager
async def durable_store_url(kind: str, directory: Path, tag: str) -> AsyncIterator[str]:
    """A fresh saga log URL on ``kind`` (sqlite, postgresql, redis), removed afterwards: the
    stores a crash test kills a process against."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'log.db'}"
        return
    from sagaway.store import open_store

    if kind == "postgresql":
        require_server("postgresql", postgres_check)
        schema = unique_pg_schema(tag)
        try:
            yield pg_schema_url(schema)
        finally:
            await drop_pg_schema(schema)
        return
    require_server("redis", redis_check)
    url = unique_redis_url(tag)
    try:
        yield url
    finally:
        async with open_store(url) as store:
            await store.purge()  # type: ignore[attr-defined]
