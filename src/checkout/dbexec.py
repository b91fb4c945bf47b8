"""How the shop's operations reach the database: one synchronous function per operation, run
by an executor.

Every shop operation (reserve stock, charge an account, create an order, mirror a saga's outcome
into the order row...) is a plain function ``fn(conn: Connection, *args) -> T`` over a
SQLAlchemy Core ``Connection``, written once. It runs inside a transaction that the *executor*
owns: a business failure raises (a domain exception) and everything ``fn`` wrote is rolled back;
a normal return commits. Services await ``executor.write(fn, *args)`` for operations that write
and ``executor.read(fn, *args)`` for read-only ones (one consistent snapshot per call).

Two executors:

* :class:`StoreExecutor`: SQLite, when the shop tables live in the saga log's own file (the
  default ``./sagaway.db``). Writes join the saga store's **group commit**
  (``TransactionalStore.run_in_transaction``): they run on the store's single writer
  connection, each atomic on its own within the batch's transaction, and share the batch's one
  fsync with the saga transitions and every other shop write queued meanwhile. There is then
  one writer for the file: no file-lock contention between the shop and the log, no
  busy-handler sleeps, no asyncio write lock. Reads run on a read-only connection of their
  own (WAL: readers see the last commit and never wait for the writer), inline on the event
  loop's thread by default.
* :class:`EngineExecutor`: anything else (PostgreSQL; SQLite in a file of its own): one
  transaction per operation on the ``AsyncEngine`` (``async with engine.begin()`` +
  ``run_sync``). Concurrent operations are kept safe by the operations themselves (claims by
  idempotency key, conditional updates), on SQLite additionally by BEGIN IMMEDIATE and an
  asyncio lock that queues this process's writers (see :mod:`checkout.db`).

The store owns BEGIN/COMMIT/ROLLBACK of its writer connection: the SQLAlchemy connection that
wraps it is handed a proxy whose ``commit``/``rollback``/``close`` do nothing, so neither
SQLAlchemy nor an operation can end the store's transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from checkout.db import Database
from checkout.dbfaults import NotConnected, is_connection_error
from sagaway.store import SagaStore, TransactionalStore

P = ParamSpec("P")
T = TypeVar("T")

Op = Callable[Concatenate[Connection, P], T]


class ShopExecutor(ABC):
    """Runs shop operations, each in one transaction of its own (see the module docstring)."""

    # Whether ``in_saga_log`` gives a write: the shop's writes can ride saga transitions.
    shares_saga_log = False

    @abstractmethod
    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, *args)`` in a transaction that commits when it returns (durably
        before this returns) and rolls back when it raises."""

    @abstractmethod
    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run the read-only ``fn(conn, *args)`` on one consistent snapshot."""

    def in_saga_log(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Callable[[Any], T] | None:
        """``fn(conn, *args)`` as a ``ctx.atomic()`` write (it then commits with the saga
        transition that carries it, or not at all), or None when the shop's writes cannot
        share the saga log's transactions (another database, or SQLite in a file of its own)."""
        return None

    def writes_in(self, store: object) -> bool:
        """Whether this executor's writes are transactions of the saga log ``store`` (so an
        order can be recorded in the one that creates its saga: ``Engine.start_with``)."""
        return False

    async def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release what the executor holds (not the database it was given)."""


class EngineExecutor(ShopExecutor):
    """One transaction per operation on the shop's ``AsyncEngine``."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = db.sessions.lock  # SQLite: this process's writers queue here
        self._reader = db.read_engine

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._lock is None:
            return await self._run(self._db.engine, fn, *args, **kwargs)
        async with self._lock:
            return await self._run(self._db.engine, fn, *args, **kwargs)

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._run(self._reader, fn, *args, **kwargs)

    @staticmethod
    async def _run(
        engine: AsyncEngine,
        fn: Callable[Concatenate[Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn`` in one transaction. A connection that cannot be had raises
        :class:`NotConnected`: then nothing was sent, which callers that must know whether a
        write happened (placing an order) rely on."""
        conn = engine.connect()
        try:
            await conn.start()
        except Exception as exc:
            if is_connection_error(exc):
                raise NotConnected() from exc
            raise
        try:
            async with conn.begin():
                return await conn.run_sync(fn, *args, **kwargs)
        finally:
            await asyncio.shield(conn.close())


class _StoreOwnedConnection:
    """A sqlite3 connection as SQLAlchemy sees it, minus the power to end transactions: the
    saga store issues BEGIN IMMEDIATE / COMMIT / ROLLBACK on it (and closes it) itself."""

    __slots__ = ("_raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def cursor(self) -> sqlite3.Cursor:
        return self._raw.cursor()

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


# The attribute of a Connection from ``wrap_sqlite`` that holds its sqlite3 connection.
RAW_SQLITE = "_checkout_sqlite3"


def wrap_sqlite(raw: sqlite3.Connection) -> Connection:
    """A SQLAlchemy Core connection over ``raw`` that never commits, rolls back or closes it."""
    proxy = _StoreOwnedConnection(raw)
    engine = create_engine(
        "sqlite://",
        creator=lambda: proxy,
        poolclass=StaticPool,
        pool_reset_on_return=None,
    )
    conn = engine.connect()
    # The precompiled statements (checkout.participants._sql) run on ``raw`` itself: the proxy
    # forwards every call through __getattr__, and they never commit or roll back.
    setattr(conn, RAW_SQLITE, raw)  # Connection declares no such attribute
    return conn


class StoreExecutor(ShopExecutor):
    """SQLite with the shop tables in the saga log's file: writes in the store's group commit,
    reads on a read-only connection in a thread of their own."""

    shares_saga_log = True

    def __init__(
        self,
        store: TransactionalStore,
        *,
        close_store: bool = False,
        inline_reads: bool = True,
        path: str | None = None,
    ) -> None:
        self._store = store
        # Reads open the shared file themselves: ``path``, by default the SQLite store's own.
        self._path = path if path is not None else str(getattr(store, "path"))  # noqa: B009
        self._busy_timeout_ms = int(getattr(store, "busy_timeout_ms", 10_000))
        self._close_store = close_store  # open_executor opened it: close it (if still open)
        self._writer_raw: sqlite3.Connection | None = None
        self._writer: Connection | None = None  # only touched inside the store's write batches
        self._pool = (
            None if inline_reads else ThreadPoolExecutor(1, thread_name_prefix="checkout-read")
        )
        self._reader_raw: sqlite3.Connection | None = None
        self._reader: Connection | None = None  # only touched by one thread (see read())

    def _on_writer(self, raw: sqlite3.Connection) -> Connection:
        if self._writer is None or self._writer_raw is not raw:
            self._writer, self._writer_raw = wrap_sqlite(raw), raw
        return self._writer

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def run(raw: sqlite3.Connection) -> T:
            return fn(self._on_writer(raw), *args, **kwargs)

        # Shop operations are row reads and writes only (no DDL, PRAGMA or savepoints of
        # their own): they need no savepoint each in the group commit (see rows_only).
        return await self._store.run_in_transaction(run, rows_only=True)

    def in_saga_log(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Callable[[Any], T] | None:
        # The effect is handed the store's writer connection, the one ``write`` runs on.
        def effect(raw: sqlite3.Connection) -> T:
            return fn(self._on_writer(raw), *args, **kwargs)

        return effect

    def writes_in(self, store: object) -> bool:
        return store is self._store

    def _read(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if self._reader is None or self._reader_raw is None:
            new = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            new.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            new.execute("PRAGMA query_only = ON")
            self._reader_raw, self._reader = new, wrap_sqlite(new)
        raw, conn = self._reader_raw, self._reader
        raw.execute("BEGIN")  # one snapshot for every statement of the operation
        try:
            return fn(conn, *args, **kwargs)
        finally:
            raw.execute("COMMIT")

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Inline (the default): on the event loop's thread. A shop read is a few indexed
        lookups, 50-100 us, less than handing it to a thread and back costs (the GIL makes
        the thread no faster), and a WAL reader never waits for the writer. With
        ``inline_reads=False``, on a thread of its own."""
        if self._pool is None:
            return self._read(fn, args, kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read, fn, args, kwargs)

    async def close(self) -> None:
        def shut() -> None:
            if self._reader_raw is not None:
                self._reader_raw.close()
                self._reader_raw = self._reader = None

        if self._pool is None:
            shut()
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, shut)
            self._pool.shutdown(wait=True)
        if self._close_store:  # normally the engine closed it already: then a no-op
            await self._store.close()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def shares_file(db: Database, store: SagaStore) -> bool:
    """True when the shop database is a file the saga log writes in, in transactions it lets
    the application share (the ``TransactionalStore`` tier: the SQLite store)."""
    return (
        isinstance(store, TransactionalStore)
        and _sqlite_file(db.url) is not None
        and store.shares_database(db.url)
    )


async def open_executor(db: Database, store: SagaStore | None = None) -> ShopExecutor:
    """The fastest executor for ``db``: :class:`StoreExecutor` when ``store`` is the SQLite saga
    log in the shop's own file (the store is opened here: an engine opening it later finds it
    open; closing the executor closes it too, if the engine did not), else
    :class:`EngineExecutor`."""
    if store is not None and shares_file(db, store):
        assert isinstance(store, TransactionalStore)
        await store.open()
        return StoreExecutor(store, close_store=True, path=str(_sqlite_file(db.url)))
    return EngineExecutor(db)
