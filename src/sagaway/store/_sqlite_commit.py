"""Where the SQLite store's COMMITs and WAL checkpoints run: off the event loop when durable.

The batch itself (BEGIN, every operation, the deferred rows) stays on the loop's thread (see
``sqlite.py``: under the GIL a writer thread only added hand-offs). The durable COMMIT is
different: it is an fsync with the GIL released, milliseconds on many disks (4 ms at the median,
9 ms at p99 on this project's VM, busy), and on the loop's thread every saga of the engine waited
for it. Here it runs on a committer thread: the batch's callers still resume only once it has
returned and the next batch starts only then, but meanwhile the loop runs the last batch's
callers (their next steps, the next signals), so the write-ahead guarantee and group commit mean
what they meant. With ``durable=false`` (``synchronous=NORMAL``) a WAL commit does not fsync:
nothing to wait for, and the COMMIT stays on the loop.

Checkpoints: left to SQLite, one runs inside the COMMIT that takes the WAL past 1,000 pages
(copying them into the database file and fsyncing it: tens of milliseconds on a slow disk), and
that batch's callers and every write queued behind it wait for it. Here the writer checkpoints
between two batches instead, once the callers of the last one are resumed, at most every
``checkpoint_interval`` seconds (0: after every batch), on the committer thread. No connection
writes meanwhile, so it copies every frame and the next batch starts the WAL over: the file
stays about as large as what is written in an interval. A checkpoint from a connection of its
own on a thread of its own (PASSIVE, concurrent with the writer) was measured and dropped: with
commits arriving back to back it never finds the WAL fully copied at a writer's BEGIN, the WAL
is never started over and grows to whatever bound is set, whose checkpoint then stalls a commit
for 90-120 ms. SQLite's own checkpoint remains as a bound at ``FALLBACK_PAGES`` (the WAL cannot
grow without limit even if checkpoints fail). A failed checkpoint is logged, never raised: the
commits are durable in the WAL.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sagaway.errors import StoreError

log = logging.getLogger("sagaway.store.sqlite")

T = TypeVar("T")

COMMIT = "COMMIT /* sagaway */"
ROLLBACK = "ROLLBACK /* sagaway */"
CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE) /* sagaway */"
FALLBACK_PAGES = 10_000  # pages of 4 KiB: 40 MiB
DEFAULT_CHECKPOINT_INTERVAL = 0.25  # seconds


def translate(exc: BaseException) -> BaseException:
    """Driver errors become StoreError at this edge; the port's own errors pass through."""
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"sqlite: {exc}")
        error.__cause__ = exc
        return error
    return exc


class Committer:
    """Commits and checkpoints the writer's connection (see the module docstring). Used by the
    store's flusher only, one call at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        threaded: bool,
        checkpoint_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._conn, self._clock, self.checkpoint_interval = conn, clock, checkpoint_interval
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="sagaway-sqlite-commit") if threaded else None
        )
        self._last_checkpoint = clock()
        conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}")

    async def commit(self) -> BaseException | None:
        """COMMIT the open transaction; None once durable, else the error for every caller of
        the batch (the transaction rolled back)."""
        conn = self._conn
        try:
            await self._off_loop(conn.execute, COMMIT)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute(ROLLBACK)
            return translate(exc)
        return None

    async def checkpoint_if_due(self) -> None:
        """Checkpoint if ``checkpoint_interval`` has passed since the last one."""
        if self._clock() - self._last_checkpoint < self.checkpoint_interval:
            return
        self._last_checkpoint = self._clock()
        try:
            await self._off_loop(self._conn.execute, CHECKPOINT)
        except Exception as exc:
            log.warning("sqlite: WAL checkpoint failed (the WAL keeps every commit): %s", exc)

    def close(self) -> None:
        """Stop the thread (idle: the flusher awaited its last call)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the committer thread, or on the loop's without one. Returns only
        once it has returned, even if cancelled: until then the connection is not the loop's."""
        if self._thread is None:
            return fn(*args)
        done = self._thread.submit(fn, *args)
        try:
            return await asyncio.wrap_future(done)
        except BaseException:
            futures.wait([done])
            raise
