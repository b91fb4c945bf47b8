"""The embedded saga log: one SQLite file, durable commits, group commit.

``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``. Query parameters:
``durable=false`` relaxes ``synchronous`` from FULL to NORMAL (a power loss may then lose the
last transitions; a process crash still loses nothing), ``busy_timeout`` (milliseconds, default
10000) bounds how long a write waits for another process holding the file's write lock.

Why group commit: a durable SQLite commit costs an fsync, and one fsync per transition caps a
store at roughly a thousand transitions a second. Here every write (create, commit, claim,
acquire, renew_leases, request_cancel, run_in_transaction) is queued; one flusher task on the
event loop takes everything queued so far as one batch, runs ``BEGIN IMMEDIATE``, applies each
operation atomically on its own (one failing with LeaseLost, SagaNotFound or InvalidTransition,
or anything else, rolls back only itself: see ``_sqlite_batch``), writes the outbox messages
of all its transitions with one ``executemany`` and compacts the sagas it finished,
``COMMIT``s (one fsync for the whole batch), then resolves every caller's future. While a
batch's callers run their next steps, their new writes accumulate for the next batch, so
batches grow with load and the fsync is shared by every saga in flight. No caller resumes
before its batch is durable: the write-ahead guarantee is unchanged.

Why on the loop's thread: the batch is Python and SQLite work under the GIL, so a writer
thread could not run it in parallel with the loop anyway, and handing each batch to a thread
and the results back (two thread wake-ups, and the two threads contending for the GIL inside
the batch) cost more than the overlap it bought. Measured on the engine benchmark: 2.6 ms per
batch on the loop against 3.2-4.0 ms on a writer thread for the same 2.1 ms of CPU, 15-30% more
sagas per second. The price is that the loop waits for the fsync (well under a millisecond on
an SSD); reads, which may wait on disk, stay on their own thread.

User code (``run_in_transaction`` functions, ``ctx.atomic()`` writes) runs on the writer's
connection with an authorizer that refuses COMMIT/ROLLBACK/BEGIN and the store's own savepoint:
such a statement fails only the operation that ran it, never the batch's transaction.

Reads (load, list_sagas, counts) run on a second connection and thread: WAL readers see the last
committed state and never wait for the writer.

Several processes may share the file (a restarted worker, two engines): ``BEGIN IMMEDIATE`` takes
the write lock up front, and ``commit`` is fenced by ``WHERE id = ? AND owner = ?``, so a write
from an engine that lost its lease changes nothing and raises ``LeaseLost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from sagaway.errors import (
    CancelRefused,
    SagaNotFound,
    StoreError,
)
from sagaway.state import Change, Event, NewSaga, OutboxMessage, SagaRecord, SagaStatus
from sagaway.store import _sqlite_admin as admin
from sagaway.store import _sqlite_ops as ops
from sagaway.store._codec import check_change, check_new, storable_text
from sagaway.store._sqlite_batch import (
    ROLLBACK,
    Guard,
    KeyUsed,
    Op,
    Result,
    commit_with_effects,
    create_with,
    resolve,
    run_rows_fn,
    run_user_fn,
    write_batch,
)
from sagaway.store._sqlite_compact import Journals
from sagaway.store._sqlite_rows import read_load
from sagaway.store._sqlite_schema import PAGE_SIZE, connect, migrate, parse_url
from sagaway.store.base import OutboxStore, Page, PruningStore, TakingStore, TransactionalStore

__all__ = ["PAGE_SIZE", "SQLiteStore", "SQLiteStoreStats", "parse_url"]

T = TypeVar("T")


@dataclass(slots=True)
class SQLiteStoreStats:
    """Group-commit counters (benchmarks read them; ``operations / batches`` is the batch size)."""

    batches: int = 0
    operations: int = 0


class SQLiteStore(OutboxStore, TransactionalStore, PruningStore, TakingStore):
    """The saga log in one SQLite file; see the module docstring for the group-commit design.

    Bound to the event loop that calls ``open()``: use it from that loop only.
    """

    _kind = "SQLite"

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, self.durable, self.busy_timeout_ms = parse_url(url)
        self.stats = SQLiteStoreStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Op] = []
        self._wakeup = asyncio.Event()
        self._writer_conn: sqlite3.Connection | None = None
        self._guard = Guard()
        self._journals = Journals()
        self._flusher: asyncio.Task[None] | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> None:
        """Create or migrate the schema, open the writer and reader connections, start the
        flusher."""
        loop = asyncio.get_running_loop()
        writer_conn = await asyncio.to_thread(self._open_writer)
        reader = ThreadPoolExecutor(1, thread_name_prefix="sagaway-sqlite-read")
        try:
            self._reader_conn = await loop.run_in_executor(
                reader,
                lambda: connect(
                    self.path,
                    durable=self.durable,
                    busy_timeout_ms=self.busy_timeout_ms,
                    reader=True,
                ),
            )
        except BaseException:
            writer_conn.close()
            reader.shutdown(wait=False)
            raise
        self._writer_conn, self._reader, self._loop = writer_conn, reader, loop
        self._flusher = loop.create_task(self._flush_loop(), name="sagaway-sqlite-flush")

    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(
            self.path, durable=self.durable, busy_timeout_ms=self.busy_timeout_ms, reader=False
        )
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        conn.set_authorizer(self._guard)
        return conn

    async def _close(self) -> None:
        """Commit everything already queued, then close the connections and the reader thread."""
        # The state is "closing" (SagaStore.close): no new operations, and the flusher, woken
        # here, drains what is queued and returns.
        self._wakeup.set()
        assert self._flusher is not None
        assert self._writer_conn is not None
        await self._flusher
        self._writer_conn.close()
        assert self._reader is not None
        assert self._reader_conn is not None
        await asyncio.get_running_loop().run_in_executor(self._reader, self._reader_conn.close)
        self._reader.shutdown(wait=True)

    # -- group commit -----------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._check_open()
        assert self._loop is not None
        future = self._loop.create_future()
        self._pending.append((future, fn, args))
        self._wakeup.set()
        return future

    async def _flush_loop(self) -> None:
        """Write everything queued so far as one batch; wake its callers; repeat.

        Callers resume (and queue their next writes) before this task takes the next batch,
        so batches fill up. Waiting for them is deliberate: writing a partial batch as soon as
        the last one is done measured slower (more, smaller batches: each one costs an fsync).
        """
        conn, guard = self._writer_conn, self._guard
        assert conn is not None
        while True:
            if not self._pending:
                if self._state != "open":
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            # One more loop turn first: tasks that the last batch's callers just spawned (a
            # started saga's driver, say) queue their writes too. Measured on the engine
            # benchmark: batches of ~32 instead of ~25 at 32 concurrent sagas, 20% fewer fsyncs.
            await asyncio.sleep(0)
            batch, self._pending = self._pending, []
            self.stats.batches += 1
            self.stats.operations += len(batch)
            try:
                results = self._write_batch(conn, batch, guard, self._journals)
            except BaseException as exc:  # never leave a caller waiting forever
                guard.active = False
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute(ROLLBACK)
                error = StoreError(f"sqlite: group commit failed: {exc!r}")
                resolve([(future, None, error) for future, _, _ in batch])
                if isinstance(exc, Exception):
                    continue
                raise  # KeyboardInterrupt/SystemExit: the batch runs on the loop's thread now
            resolve(results)

    @staticmethod
    def _write_batch(
        conn: sqlite3.Connection, batch: list[Op], guard: Guard, journals: Journals
    ) -> list[Result]:
        """One transaction for the whole batch, one durable COMMIT; each operation atomic
        (``_sqlite_batch.write_batch``)."""
        return write_batch(conn, batch, guard, journals)

    # -- writes -----------------------------------------------------------------------------

    # ``create`` and ``commit``, the writes of every saga, are plain methods that queue the
    # write when called and return the future its batch resolves: awaiting it is awaiting
    # the write (the port's ``Awaitable``), without a coroutine built, driven and resumed
    # through, interpreted, for every transition of every saga (engine_instructions.py,
    # sqlite://, compiled: ~9k instructions a saga). They queue as ``_submit`` does, written
    # out: calling it (and ``_check_open``) counted ~3k instructions a saga more. Every
    # caller awaits where it calls, so queueing at the call rather than at the first await
    # changes nothing for them; a Future is not a coroutine for ``create_task``. As from a
    # coroutine, what the checks or a closed store raise comes out of the await, not the
    # call (``gather(..., return_exceptions=True)`` collects it): the future comes failed.

    def create(self, new: NewSaga) -> asyncio.Future[tuple[str, bool]]:
        try:
            check_new(new)  # before it joins a batch: a bad value fails its caller only
            if self._state != "open":  # (_check_open, without a call a write)
                raise self._not_open()
        except Exception as exc:
            return _failed(exc)
        assert self._loop is not None
        future = self._loop.create_future()
        self._pending.append((future, ops.create, (new,)))
        self._wakeup.set()
        return future

    async def create_with(
        self, new: NewSaga, prepare: Callable[[sqlite3.Connection], Any]
    ) -> tuple[str, bool]:
        """``prepare`` runs on the writer's connection in the batch, as a ``rows_only``
        ``run_in_transaction`` function does (no savepoint: one that fails having written
        rows, or a key found used after it wrote, is undone by the batch's replay)."""
        check_new(new)
        try:
            created: tuple[str, bool] = await self._submit(create_with, new, prepare)
        except KeyUsed as used:
            return used.saga_id, False
        return created

    def commit(
        self, saga_id: str, owner: str | None, change: Change, at: float
    ) -> asyncio.Future[None]:
        try:
            check_change(change)
            if self._state != "open":  # (_check_open, without a call a write)
                raise self._not_open()
        except Exception as exc:
            return _failed(exc)
        assert self._loop is not None
        future = self._loop.create_future()
        # With user writes (ctx.atomic()) too: see _write_batch.
        fn = commit_with_effects if change.effects else ops.commit
        self._pending.append((future, fn, (saga_id, owner, change, at)))
        self._wakeup.set()
        return future

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        definitions: Sequence[tuple[str, int]],
        limit: int,
        include_own: bool = False,
    ) -> list[SagaRecord]:
        claimed: list[SagaRecord] = await self._submit(
            ops.claim, owner, now, lease_seconds, list(definitions), limit, include_own
        )
        return claimed

    async def acquire(
        self,
        saga_id: str,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        statuses: Sequence[SagaStatus],
        event: Event | None = None,
    ) -> SagaRecord | None:
        record: SagaRecord | None = await self._submit(
            ops.acquire, saga_id, owner, now, lease_seconds, tuple(statuses), event
        )
        return record

    async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> list[str]:
        ids: list[str] = await self._submit(ops.renew_leases, owner, now, lease_seconds)
        return ids

    async def request_cancel(
        self, saga_id: str, event: Event, at: float, *, until: str | None = None
    ) -> SagaRecord:
        record: SagaRecord | None
        record, reason = await self._submit(ops.request_cancel, saga_id, event, at, until)
        if reason is not None:
            raise CancelRefused(reason)
        assert record is not None
        return record

    def shares_database(self, url: str) -> bool:
        """True when ``url`` (an SQLAlchemy URL: ``sqlite:///shop.db``,
        ``sqlite+aiosqlite:////abs/shop.db``) names this store's file."""
        parts = urlsplit(url)
        path = parts.path[1:]
        if not parts.scheme.startswith("sqlite") or parts.netloc or path in ("", ":memory:"):
            return False
        return Path(path).resolve() == Path(self.path).resolve()

    async def run_in_transaction(
        self, fn: Callable[[sqlite3.Connection], T], *, rows_only: bool = False
    ) -> T:
        """Run ``fn(conn)`` on the writer's connection inside the next group commit; return its
        result once that commit is durable.

        This is how a step that keeps its own tables in the same database file makes its
        writes durable together with the saga log, sharing the batch's single fsync instead of
        paying its own. ``fn`` runs on the loop's thread inside its own savepoint: if it
        raises, only its writes are rolled back and the exception (``sqlite3.Error`` as
        ``StoreError``) is raised here; other operations of the batch are unaffected.

        ``fn`` must be quick and must not block: it runs on the event loop's thread, and every write
        of the batch waits for it. It must not keep the connection. The store owns the transaction:
        ``commit()``, ``rollback()``, BEGIN/COMMIT/ROLLBACK/END are refused (``StoreError``, only
        this call fails); savepoints of its own are fine. Of the other writes in the same batch,
        ``fn`` sees those queued before it (the sagas they finish are compacted at its end).
        Its result is handed back as is. If another operation of the batch hits an unexpected driver
        error the batch is rolled back and replayed, calling ``fn`` again: its writes still land
        exactly once, but keep it free of side effects outside the database.

        ``rows_only``: ``fn`` only reads and writes rows (SELECT, INSERT, UPDATE, DELETE; no
        schema, PRAGMA or savepoint statements). It then runs without a savepoint of its own,
        which costs two statements: when it raises having changed no row
        (``conn.total_changes`` as before it ran; a failing statement is undone by SQLite
        itself), there is nothing to undo; when it raises after changing rows, the batch is
        rolled back and replayed with a savepoint around every operation, so it still fails
        alone. Such a function should raise its business failures before its first write:
        a replay redoes the whole batch.
        """
        run = run_rows_fn if rows_only else run_user_fn
        return cast(T, await self._submit(run, fn))

    # -- reads ------------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        assert self._loop is not None
        assert self._reader is not None
        try:
            return await self._loop.run_in_executor(self._reader, fn, self._reader_conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        if not storable_text(saga_id):
            return None
        return await self._read(read_load, saga_id, history)

    async def peek(self, saga_id: str) -> SagaRecord | None:
        """Read on the writer's connection, on the loop's thread, between batches (a batch
        runs whole within one turn of the loop): the newest state, and no thread hop."""
        self._check_open()
        assert self._writer_conn is not None
        try:
            found = storable_text(saga_id)
            return admin.peek(self._writer_conn, saga_id) if found else None
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        items, total = await self._read(admin.read_list, status, name, limit, offset)
        return Page(items=items, total=total)

    async def counts(self) -> dict[SagaStatus, int]:
        return await self._read(admin.read_counts)

    async def find_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        return await self._read(admin.read_ids, prefix, limit)

    async def list_waiting(self, *, prefix: str = "", limit: int = 50, offset: int = 0) -> Page:
        items, total = await self._read(admin.read_waiting, prefix, limit, offset)
        return Page(items=items, total=total)

    # -- outbox -----------------------------------------------------------------------------

    async def outbox_pending(
        self, *, limit: int, older_than: float | None = None
    ) -> list[OutboxMessage]:
        return await self._read(admin.read_outbox, limit, older_than)

    async def outbox_count(self) -> int:
        return await self._read(admin.read_outbox_count)

    async def outbox_delete(self, ids: Collection[str]) -> int:
        wanted = [i for i in ids if storable_text(i)]  # one that cannot be stored is not there
        if not wanted:
            return 0
        deleted: int = await self._submit(ops.outbox_delete, wanted)
        return deleted

    async def stranded(
        self, *, now: float, owner: str, known: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        return await self._read(admin.read_stranded, now, owner, known)

    # -- retention ---------------------------------------------------------------------------

    async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
        if limit <= 0:
            return []
        return await self._read(admin.read_prunable, finished_before, limit)

    async def prune(self, ids: Collection[str], *, finished_before: float) -> list[str]:
        """Runs inside a group commit like any write: keep ``ids`` to a few hundred, so the
        batch it joins (and every transition waiting on that batch's fsync) stays short."""
        wanted = list(dict.fromkeys(i for i in ids if storable_text(i)))
        if not wanted:
            return []
        removed: list[str] = await self._submit(admin.prune, wanted, finished_before)
        return removed

    async def set_pinned(self, saga_id: str, pinned: bool) -> SagaRecord:
        if not storable_text(saga_id):
            raise SagaNotFound(saga_id)
        record: SagaRecord = await self._submit(admin.set_pinned, saga_id, pinned)
        return record


def _failed(exc: Exception) -> asyncio.Future[Any]:
    """A future that raises ``exc`` when awaited (``SQLiteStore.create``, ``commit``)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
