"""The production saga log on PostgreSQL: group commit in one statement, SKIP LOCKED claims,
LISTEN/NOTIFY wake-ups.

``postgresql://user@host:5432/db`` (also ``postgres://``, ``postgresql+asyncpg://``,
``postgresql+psycopg://``: the store picks its own driver). Query parameters: ``schema`` (default
``sagaway``; created if missing, or an existing one is used, so the log can live in an
application's database under its own schema), ``pool_size`` (default 4). Any other parameter
(``sslmode``, ``application_name``...) is passed to the driver.

Driver: asyncpg, chosen by measuring (``benchmarks/pg_driver_choice.py``, 32 sagas in flight,
each transition one fenced UPDATE + 2 step upserts + 2 events, PostgreSQL 15 on loopback, this
2-CPU machine; transitions/s):

    ===============================================  =======  =======
    how a transition is sent                         asyncpg  psycopg
    ===============================================  =======  =======
    a transaction of 5 statements, 32 connections      2,327    1,418
    one CTE statement per transition, 32 connections   3,113    2,612
    one CTE statement per *batch* (group commit)      20,260   13,361
    ===============================================  =======  =======

The statement's shape matters most (batching: 6-9x), and on the same shape asyncpg costs less
client CPU per row (binary protocol, C codecs; 1.5x on the batch), which on a machine where the
engine and the server share two cores is throughput. psycopg's pipeline mode would also give one
round trip, but not less CPU.

Why group commit here too: one statement per transition is one WAL flush and ~100 µs of client
CPU each. So ``create`` and ``commit`` are queued; a flusher takes everything queued while the
previous batch was in flight and sends it, creates and commits together, as one
data-modifying CTE over arrays (see
``_pg_ops``): one round trip, one flush, atomic. Each operation's lease fence is in the UPDATE's
join, so a fenced-out commit writes nothing and the rest of the batch is unaffected. Up to
``pool_size // 2`` batches are in flight on separate pooled connections; the rest of the pool
serves claims and reads. No caller resumes before its statement has committed.

Measured end to end (``benchmarks/engine_throughput.py --store postgresql://... --n 10000
--concurrency 32``: three-step sagas whose steps write rows to the same database, one in ten
compensating): 970-1,270 sagas/s, p99 50-100 ms, on this 2-CPU machine shared with other
workloads (load average ~3). A saga's critical path is 7 sequential durable writes (4 log, 3
ledger), so latency per batch, not bandwidth, is the limit.

Claims: ``SELECT ... FOR UPDATE SKIP LOCKED`` inside the claiming UPDATE, so engines in any
number of processes never claim the same saga and never wait on each other.

Wake-ups: creating a PENDING saga (an API-only engine) or handing a lease back to an active
saga (an operator's retry) runs ``pg_notify`` inside the same statement, so it is delivered only
if the write commits. ``on_work`` callbacks are fed from a dedicated LISTEN connection,
reconnected with backoff (and callbacks called once on reconnection, since notifications may
have been missed meanwhile).

Errors: asyncpg and socket errors become ``StoreError`` here; a refused connection names the
host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs shipped

from sagaway.errors import (
    CancelPending,
    CancelRefused,
    LeaseLost,
    SagaNotFound,
    SagawayError,
    StoreError,
    TakeConflict,
    UnstorableValue,
)
from sagaway.state import Change, Event, NewSaga, OutboxMessage, SagaRecord, SagaStatus
from sagaway.store import _pg_ops as ops
from sagaway.store import _pg_retention as retention
from sagaway.store._codec import check_change, check_new, message_from_row, storable_text
from sagaway.store._pg_compact import compact_after, finished_ids
from sagaway.store._pg_schema import (
    SERVER_SETTINGS,
    channel_for,
    check_schema_name,
    connection_lost,
    migrate,
    parse_url,
    saga_from_row,
)
from sagaway.store.base import OutboxStore, Page, PruningStore, TakingStore

__all__ = ["PostgresStore", "PostgresStoreStats", "parse_url"]

log = logging.getLogger("sagaway.store.postgres")

# Queued write: (future, "create" | "commit", payload, attempts so far).
_Op = tuple["asyncio.Future[Any]", str, Any, int]
_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]
_MAX_ATTEMPTS = 5  # a create re-queued after racing another process on its idempotency key


@dataclass(slots=True)
class PostgresStoreStats:
    """Group-commit counters (``operations / batches`` is the mean batch size)."""

    batches: int = 0
    operations: int = 0


class PostgresStore(OutboxStore, PruningStore, TakingStore):
    """The saga log in PostgreSQL; see the module docstring for the design.

    Bound to the event loop that calls ``open()``: use it from that loop only.
    """

    _kind = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = parse_url(url)
        self.schema = self.settings.schema
        self.stats = PostgresStoreStats()
        self._sql = ops.Statements(check_schema_name(self.schema))
        self._retention = retention.RetentionStatements(check_schema_name(self.schema))
        self._channel = channel_for(self.schema)
        self._pool: asyncpg.Pool | None = None
        self._pending: list[_Op] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, self.settings.pool_size // 2))
        self._batches: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, create or migrate the schema, start the flusher (and the listener)."""
        try:
            self._pool = await asyncpg.create_pool(
                self.settings.dsn,
                min_size=1,
                max_size=self.settings.pool_size,
                server_settings=SERVER_SETTINGS,
            )
            async with self._pool.acquire() as conn:
                await migrate(conn, self.schema)
        except SagawayError:
            await self._terminate_pool()
            raise
        except Exception as exc:
            await self._terminate_pool()
            raise self._error(exc, "cannot open the saga log") from exc
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop(), name="sagaway-pg-flush")
        if self._callbacks:
            self._start_listener()

    async def _close(self) -> None:
        """Commit everything already queued, then stop listening and close the pool."""
        self._wakeup.set()  # the flusher sees "closing": it drains the queue and returns
        assert self._flusher is not None
        await self._flusher
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        assert self._pool is not None
        await self._pool.close()

    async def _terminate_pool(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    @property
    def _where(self) -> str:
        s = self.settings
        return f"{s.host}:{s.port} (schema {self.schema!r})"

    def _error(self, exc: BaseException, doing: str = "") -> StoreError:
        """A driver or socket error as a StoreError that says where and what failed."""
        prefix = f"postgresql {self._where}: {doing + ': ' if doing else ''}"
        if isinstance(exc, ConnectionRefusedError | OSError) and not isinstance(
            exc, asyncpg.PostgresError
        ):
            s = self.settings
            message = f"cannot connect to PostgreSQL at {s.host}:{s.port}: {exc} (is it running?)"
            error = StoreError(f"postgresql: {message}")
        elif isinstance(exc, TimeoutError):
            error = StoreError(f"{prefix}timed out")
        else:
            error = StoreError(f"{prefix}{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    # -- wake-ups ---------------------------------------------------------------------------

    def on_work(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._state == "open" and self._listener is None:
            self._start_listener()

    def _start_listener(self) -> None:
        loop = asyncio.get_running_loop()
        self._listening = loop.create_future()
        self._listener = loop.create_task(self._listen(), name="sagaway-pg-listen")

    async def _listen(self) -> None:
        """Hold a LISTEN connection open for as long as the store is; reconnect when lost."""
        assert self._listening is not None
        backoff = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.settings.dsn, server_settings=SERVER_SETTINGS)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(self._channel, self._notified)
                if self._listening.done():
                    self._wake_all()  # back after a loss: notifications may have been missed
                else:
                    self._listening.set_result(None)
                backoff = 0.1
                await lost.wait()
                log.warning("LISTEN connection to %s lost; reconnecting", self._where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "cannot LISTEN on %s: %s; retrying in %.1f s", self._where, exc, backoff
                )
                if not self._listening.done():  # claims must not wait for it
                    self._listening.set_result(None)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)  # reconnection backoff
            backoff = min(backoff * 2, 5.0)

    def _notified(self, *_args: object) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_work callback failed")

    # -- group commit -----------------------------------------------------------------------

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        self._check_open()
        future = asyncio.get_running_loop().create_future()
        self._pending.append((future, kind, payload, 0))
        self._wakeup.set()
        return future

    def _take_batch(self) -> list[_Op]:
        """Everything queued, except a second commit of one saga or create of one idempotency
        key, or a second change writing one outbox message id: those wait for the next batch
        (see ``_pg_ops`` for why)."""
        batch: list[_Op] = []
        later: list[_Op] = []
        sagas: set[str] = set()
        keys: set[str] = set()
        messages: set[str] = set()
        for op in self._pending:
            if op[1] == "commit":
                if op[2][0] in sagas:
                    later.append(op)
                    continue
                outbox = op[2][2].outbox
                if outbox:  # nor two changes writing one outbox message id
                    ids = {m.id for m in outbox}
                    if not messages.isdisjoint(ids):
                        later.append(op)
                        continue
                    messages |= ids
                sagas.add(op[2][0])
            elif (key := op[2].idempotency_key) is not None:
                if key in keys:
                    later.append(op)
                    continue
                keys.add(key)
            batch.append(op)
        self._pending = later
        return batch

    async def _flush_loop(self) -> None:
        """Whenever a batch slot is free, send everything queued as the next batch."""
        while True:
            if not self._pending:
                if self._state != "open":
                    if self._batches:
                        await asyncio.gather(*self._batches)
                        continue  # a finished batch may have re-queued a create
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            await self._slots.acquire()
            batch = self._take_batch()
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[_Op]) -> None:
        results: list[_Result] = []
        try:
            assert self._pool is not None
            async with self._pool.acquire() as conn:
                await self._isolated(conn, batch, results)
        except Exception as exc:  # connection lost or refused: the rest of the batch is unknown
            failed = self._error(exc, "write failed")
            answered = {id(r[0]) for r in results}
            results += [(op[0], None, failed) for op in batch if id(op[0]) not in answered]
        finally:
            self.stats.batches += 1
            self.stats.operations += len(batch)
            # Callers first, then the slot: they queue their next writes before the flusher
            # takes the next batch, so batches fill up under load.
            for future, value, error in results:
                if future.done():  # the caller was cancelled; its write stands all the same
                    continue
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            self._slots.release()

    async def _isolated(
        self, conn: asyncpg.Connection, batch: list[_Op], results: list[_Result]
    ) -> None:
        """Run the batch statement; if PostgreSQL refuses it (a duplicate id, a value jsonb
        cannot hold) or the driver cannot encode an argument, run each operation alone so only
        the culprit fails. Nothing of a refused statement was written (and nothing is sent when
        an argument cannot be encoded), so running its operations again is safe. Values are
        checked before they are queued (``check_change``): this is the second line."""
        try:
            commits = [op[2] for op in batch if op[1] == "commit"]
            args = ops.write_args(
                [op[2] for op in batch if op[1] == "create"], commits, self._channel
            )
            if any(ops.is_remote(c[2]) for c in commits):
                args += ops.remote_args(commits)
                rows = await conn.fetch(self._sql.write_batch_remote, *args)
            else:
                rows = await conn.fetch(self._sql.write_batch, *args)
        except (asyncpg.PostgresError, TypeError, ValueError) as exc:  # DataError: ValueError
            if connection_lost(conn, exc):
                raise  # not a refusal: the connection is gone (see _run_batch)
            if len(batch) == 1:
                results.append((batch[0][0], None, self._refused(exc)))
                return
            for op in batch:
                await self._isolated(conn, [op], results)
            return
        for op in self._answer(batch, rows, results):
            # Refused by its lease or by a cancel: read which, now (the batch statement's own
            # snapshot may predate the cancel that its UPDATE saw).
            saga_id, owner, take = op[2][0], op[2][1], op[2][2].take
            facts = await conn.fetchrow(self._sql.fence_facts, saga_id)
            if take is not None and (facts is None or not facts[1] or facts[2] != take.fence):
                error: Exception = TakeConflict(f"saga {saga_id} was written since it was read")
            elif facts is not None and facts[1] and (take or owner is None or facts[0] == owner):
                error = CancelPending(f"saga {saga_id}: a cancel is pending")
            else:
                error = LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
            results.append((op[0], None, error))
        applied = {r[1] for r in rows if not r[0] and r[2]}
        finished = finished_ids(commits, applied)
        if finished:
            await compact_after(conn, self._sql.compact, finished)

    def _refused(self, exc: Exception) -> StoreError | UnstorableValue:
        """One operation's own refusal: a value PostgreSQL (class 22, data exception) or the
        driver cannot take is an UnstorableValue; anything else (a duplicate id) a StoreError."""
        if isinstance(exc, asyncpg.DataError | TypeError | ValueError):
            error = UnstorableValue(f"the saga log cannot store this write: {exc}")
            error.__cause__ = exc
            return error
        return self._error(exc, "write failed")

    def _answer(self, batch: list[_Op], rows: list[Any], results: list[_Result]) -> list[_Op]:
        """Each operation's outcome from the batch statement's rows (it has committed); returns
        the guarded commits that were not applied, for the caller to explain."""
        unsure: list[_Op] = []
        creates = [op for op in batch if op[1] == "create"]
        commits = [op for op in batch if op[1] == "commit"]
        outcome = {(r[0], r[1]): (r[2], r[3]) for r in rows}
        for op in creates:
            created, existing = outcome[(True, op[2].id)]
            if created:
                results.append((op[0], (op[2].id, True), None))
            elif existing is not None:
                results.append((op[0], (existing, False), None))
            elif op[3] + 1 < _MAX_ATTEMPTS:
                # Another transaction inserted this key after our snapshot: look again.
                self._pending.append((op[0], op[1], op[2], op[3] + 1))
                self._wakeup.set()
            else:
                raced = StoreError(f"create of {op[2].id}: idempotency key kept racing")
                results.append((op[0], None, raced))
        for op in commits:
            saga_id, owner = op[2][0], op[2][1]
            done, found = outcome[(False, saga_id)]
            if done:
                results.append((op[0], None, None))
            elif found is None:
                results.append((op[0], None, SagaNotFound(saga_id)))
            elif op[2][2].unless_cancelled:
                unsure.append(op)
            elif op[2][2].take is not None:
                conflict = TakeConflict(f"saga {saga_id} was written since it was read")
                results.append((op[0], None, conflict))
            else:
                lost = LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
                results.append((op[0], None, lost))
        return unsure

    # -- writes -----------------------------------------------------------------------------

    async def create(self, new: NewSaga) -> tuple[str, bool]:
        check_new(new)  # before it joins a batch: a bad value fails its caller only
        result: tuple[str, bool] = await self._submit("create", new)
        return result

    async def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        check_change(change)
        await self._submit("commit", (saga_id, owner, change, at))

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        self._check_open()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except SagawayError:
            raise
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # a connection the server ended, found on release
            OSError,
            TimeoutError,
        ) as exc:
            raise self._error(exc) from exc

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
        if self._listening is not None and not self._listening.done():
            # LISTEN before looking: work created after this claim's snapshot is then notified.
            await asyncio.wait([self._listening])
        if not definitions or limit <= 0:
            return []
        async with self._connection() as conn:
            return await ops.claim(
                conn, self._sql, owner, now, lease_seconds, definitions, limit, include_own
            )

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
        async with self._connection() as conn:
            return await ops.acquire(
                conn, self._sql, saga_id, owner, now, lease_seconds, statuses, event
            )

    async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> list[str]:
        async with self._connection() as conn:
            return await ops.renew_leases(conn, self._sql, owner, now, lease_seconds)

    async def request_cancel(
        self, saga_id: str, event: Event, at: float, *, until: str | None = None
    ) -> SagaRecord:
        if not storable_text(saga_id):
            raise SagaNotFound(saga_id)
        async with self._connection() as conn:
            record, reason = await ops.request_cancel(conn, self._sql, saga_id, event, at, until)
        if reason is not None:
            raise CancelRefused(reason)
        assert record is not None
        return record

    # -- reads ------------------------------------------------------------------------------

    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        if not storable_text(saga_id):
            return None
        async with self._connection() as conn:
            return await ops.load(conn, self._sql, saga_id, history)

    async def peek(self, saga_id: str) -> SagaRecord | None:
        if not storable_text(saga_id):
            return None
        async with self._connection() as conn:
            row = await conn.fetchrow(self._sql.peek, saga_id)
        return None if row is None else saga_from_row(row)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        async with self._connection() as conn:
            items, total = await ops.list_sagas(conn, self._sql, status, name, limit, offset)
        return Page(items=items, total=total)

    async def counts(self) -> dict[SagaStatus, int]:
        async with self._connection() as conn:
            return await ops.counts(conn, self._sql)

    async def stranded(
        self, *, now: float, owner: str, known: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        names, versions = [k[0] for k in known], [k[1] for k in known]
        async with self._connection() as conn:
            rows = await conn.fetch(self._sql.stranded_not_parked, now, owner)
            found = {(n, v): count for n, v, count in rows if (n, v) not in known}
            for n, v in await conn.fetch(self._sql.unknown_parked, names, versions):
                count = await conn.fetchval(self._sql.stranded_parked, now, owner, n, v)
                if count:
                    found[(n, v)] = found.get((n, v), 0) + count
        return found

    async def find_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        async with self._connection() as conn:
            return [row[0] for row in await conn.fetch(self._sql.find_ids, prefix, limit)]

    async def list_waiting(self, *, prefix: str = "", limit: int = 50, offset: int = 0) -> Page:
        async with self._connection() as conn:
            items, total = await ops.list_waiting(conn, self._sql, prefix, limit, offset)
        return Page(items=items, total=total)

    # -- outbox -----------------------------------------------------------------------------

    async def outbox_pending(
        self, *, limit: int, older_than: float | None = None
    ) -> list[OutboxMessage]:
        async with self._connection() as conn:
            rows = await conn.fetch(self._sql.outbox_pending, max(limit, 0), older_than)
        return [message_from_row(r) for r in rows]

    async def outbox_delete(self, ids: Collection[str]) -> int:
        wanted = [i for i in ids if storable_text(i)]  # one that cannot be stored is not there
        if not wanted:
            return 0
        async with self._connection() as conn:
            status = await conn.execute(self._sql.outbox_delete, wanted)
        return int(status.split()[-1])  # "DELETE n"

    async def outbox_count(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval(self._sql.outbox_count))

    # -- retention (see _pg_retention) --------------------------------------------------------

    async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
        async with self._connection() as conn:
            return await retention.prunable(conn, self._retention, finished_before, max(limit, 0))

    async def prune(self, ids: Collection[str], *, finished_before: float) -> list[str]:
        wanted = list(dict.fromkeys(i for i in ids if storable_text(i)))
        if not wanted:
            return []
        async with self._connection() as conn:
            return await retention.prune(conn, self._retention, wanted, finished_before)

    async def prune_next(self, *, finished_before: float, limit: int) -> list[str]:
        async with self._connection() as conn:
            return await retention.prune_next(conn, self._retention, finished_before, max(limit, 0))

    async def set_pinned(self, saga_id: str, pinned: bool) -> SagaRecord:
        if not storable_text(saga_id):
            raise SagaNotFound(saga_id)
        async with self._connection() as conn:
            return await retention.set_pinned(conn, self._retention, self._sql, saga_id, pinned)
