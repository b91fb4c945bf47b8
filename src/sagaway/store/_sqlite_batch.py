"""The SQLite store's group commit: one batch of queued writes as one transaction.

Apart from the store's class (``sqlite.SQLiteStore``, which queues the writes and wakes their
callers) so that it is compiled (DEVELOPERS.md "The compiled build"): it runs once for every
write of every saga.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, Final

from sagaway.errors import (
    EffectRefused,
    InvalidTransition,
    LeaseLost,
    SagaNotFound,
    StoreError,
)
from sagaway.state import Change, NewSaga
from sagaway.store import _sqlite_ops as ops
from sagaway.store._codec import run_effects
from sagaway.store._sqlite_compact import Journals

# One queued write: the caller's future, the function to run on the writer's connection, its
# arguments. A tuple, not an object: at tens of thousands of writes a second it adds up.
Op = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]
Result = tuple["asyncio.Future[Any]", Any, BaseException | None]

# The store's own transaction and savepoint statements carry a comment so that they never share
# the driver's statement cache with a user's plain "COMMIT" (cached ones are not re-authorized).
_BEGIN: Final = "BEGIN IMMEDIATE /* sagaway */"
_COMMIT: Final = "COMMIT /* sagaway */"
ROLLBACK: Final = "ROLLBACK /* sagaway */"
_SAVEPOINT: Final = "SAVEPOINT sagaway_op /* sagaway */"
_ROLLBACK_TO: Final = "ROLLBACK TO sagaway_op /* sagaway */"
_RELEASE: Final = "RELEASE sagaway_op /* sagaway */"


def translate(exc: BaseException) -> BaseException:
    """Driver errors become StoreError at this edge; the port's own errors pass through."""
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"sqlite: {exc}")
        error.__cause__ = exc
        return error
    return exc


def write_batch(
    conn: sqlite3.Connection, batch: list[Op], guard: Guard, journals: Journals
) -> list[Result]:
    """One transaction for the whole batch, one durable COMMIT; each operation atomic.

    Fast path: the store's own operations raise their contract errors before their first
    write (see ``_sqlite_ops``), so they need no savepoint, and their outbox messages and
    compactions are done for the whole batch at the end (``ops.Pending``); a transition carrying
    ``ctx.atomic()`` writes runs without a savepoint too (those writes rarely fail); a
    ``run_in_transaction`` function gets one (a business failure raised inside is its
    normal way to say no) unless it only touches rows (``rows_only``): then one that fails
    having changed no row has nothing to undo, and one that fails after changing rows is
    undone by the replay; the same for a transition whose ``ctx.atomic()`` writes refuse it
    (``EffectRefused``: they run before it, see ``commit_with_effects``). Anything unexpected
    (a driver error halfway through an operation, a failing ``ctx.atomic()`` write, a failing
    batched write) rolls the batch back and replays it with a savepoint around every
    operation and nothing deferred, so only the operation at fault fails. Savepoints cost
    two statements each: on the engine benchmark, more than a transition's own statement,
    which is why the fast path avoids them.
    """
    try:
        return _apply(conn, batch, guard, journals, safe=False)
    except _Replay:
        return _apply(conn, batch, guard, journals, safe=True)


class _Replay(Exception):
    """The fast path met an error it cannot confine to one operation."""


class _TransactionEnded(StoreError):
    """User code ended the batch's transaction despite the guard."""


class Guard:
    """The writer connection's authorizer: while ``active`` (user code is running), refuse
    statements that would end the store's transaction or touch its savepoint.

    SQLite consults it only when it prepares a statement, so cached statements cost nothing.
    """

    __slots__ = ("active", "refused")

    def __init__(self) -> None:
        self.active = False
        self.refused = False

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None
    ) -> int:
        if self.active and (
            action == sqlite3.SQLITE_TRANSACTION
            or (action == sqlite3.SQLITE_SAVEPOINT and arg2 == "sagaway_op")
        ):
            self.refused = True
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK


def commit_with_effects(
    conn: sqlite3.Connection,
    saga_id: str,
    owner: str | None,
    change: Change,
    at: float,
    pending: ops.Pending | None = None,
) -> None:
    """A transition plus the writes its step enlisted with ``ctx.atomic()``, as one unit (the
    caller holds the guard up while it runs).

    The writes run first: a refusal (``StepFailed``, see ``EffectRefused``) is mostly taken
    before its write's first change (a guarded UPDATE that matched no row), and then, the
    transition not written either, the batch's fast path has nothing to undo (see ``_apply``).
    A refusal after a change, a broken write, or the transition's own failure after the
    writes changed rows are undone by the savepoint (or the replay)."""
    run_effects(change, conn)
    ops.commit(conn, saga_id, owner, change, at, pending)


class KeyUsed(Exception):
    """``create_with``: the saga's idempotency key was used already, after ``prepare`` wrote;
    raised so that its writes are undone, then answered as ``create``'s ``(id, False)``."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id


def create_with(
    conn: sqlite3.Connection,
    new: NewSaga,
    prepare: Callable[[sqlite3.Connection], Any],
    pending: ops.Pending | None = None,
) -> tuple[str, bool]:
    """``TransactionalStore.create_with``: the application's writes, then the saga they
    belong to, as one operation (the caller holds the guard up while it runs)."""
    new.input = prepare(conn)
    saga_id, created = ops.create(conn, new, pending)
    if not created:
        raise KeyUsed(saga_id)
    return saga_id, created


def run_user_fn(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    return fn(conn)


def run_rows_fn(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """``run_in_transaction(fn, rows_only=True)``: no savepoint on the fast path."""
    return fn(conn)


# The operations ``_apply`` tells apart, as Final names: compiled, ``fn is run_user_fn`` looks
# the function up in the module's dict (``ops.commit``: and an attribute of the module) at every
# operation of every batch; a Final is a C static.
_OP_COMMIT: Final = ops.commit
_OP_CREATE: Final = ops.create
_USER_FN: Final = run_user_fn
_ROWS_FN: Final = run_rows_fn
_WITH_EFFECTS: Final = commit_with_effects
_CREATE_WITH: Final = create_with


def _user_error(exc: Exception, guard: Guard) -> BaseException:
    if guard.refused:
        guard.refused = False
        error = StoreError(
            "the store owns the transaction: a run_in_transaction function or ctx.atomic() "
            f"write may not commit, roll back or begin one ({exc})"
        )
        error.__cause__ = exc
        return error
    return translate(exc)


def _user_code_returned(conn: sqlite3.Connection, guard: Guard) -> None:
    """Called when user code has returned inside the batch's transaction: the guard is off
    again, and the transaction must still be open (the guard refuses the code's COMMIT and
    ROLLBACK; this makes sure)."""
    guard.active = False
    if not conn.in_transaction:
        raise _TransactionEnded("user code ended the store's transaction")


def _apply(
    conn: sqlite3.Connection,
    batch: list[Op],
    guard: Guard,
    journals: Journals,
    *,
    safe: bool,
) -> list[Result]:
    execute = conn.execute
    results: list[Result] = []
    append = results.append
    pending = None if safe else ops.Pending(journals, conn.cursor())
    journals.fresh.clear()  # numbers a rolled-back batch read
    try:
        execute(_BEGIN)
        for future, fn, args in batch:
            if safe or fn is _USER_FN:
                user = fn is _USER_FN or fn is _ROWS_FN or fn is _WITH_EFFECTS or fn is _CREATE_WITH
                execute(_SAVEPOINT)
                guard.active, guard.refused = user, False
                try:
                    value = fn(conn, *args)
                except Exception as exc:
                    guard.active = False
                    if not conn.in_transaction:  # cannot happen with the guard; be sure
                        raise _TransactionEnded(str(exc)) from exc
                    execute(_ROLLBACK_TO)
                    execute(_RELEASE)
                    if type(exc) is EffectRefused:
                        exc.__traceback__ = None
                    append((future, None, _user_error(exc, guard)))
                else:
                    _user_code_returned(conn, guard)
                    execute(_RELEASE)
                    append((future, value, None))
                continue
            assert pending is not None
            try:
                # The store's own writes called by name, not as ``fn(conn, *args)``: compiled,
                # that is a direct C call instead of building an argument tuple and parsing it.
                if fn is _OP_COMMIT:
                    ops.commit(conn, args[0], args[1], args[2], args[3], pending)
                    value = None
                elif fn is _OP_CREATE:
                    value = ops.create(conn, args[0], pending)
                elif fn is _ROWS_FN or fn is _CREATE_WITH:
                    changes = conn.total_changes
                    guard.active, guard.refused = True, False
                    try:
                        if fn is _ROWS_FN:
                            value = fn(conn, *args)
                        else:
                            value = create_with(conn, args[0], args[1], pending)
                    except Exception as exc:
                        guard.active = False
                        if not conn.in_transaction:
                            raise _TransactionEnded(str(exc)) from exc
                        if conn.total_changes != changes:  # its writes need the replay's undo
                            raise _Replay from None
                        append((future, None, _user_error(exc, guard)))  # nothing to undo
                        continue
                    _user_code_returned(conn, guard)
                elif fn is _WITH_EFFECTS:
                    changes = conn.total_changes
                    guard.active, guard.refused = True, False
                    try:
                        commit_with_effects(conn, args[0], args[1], args[2], args[3], pending)
                    except (EffectRefused, LeaseLost, SagaNotFound, InvalidTransition) as exc:
                        guard.active = False
                        if not conn.in_transaction:
                            raise _TransactionEnded(str(exc)) from exc
                        if conn.total_changes != changes:  # its writes need the replay's undo
                            raise _Replay from None
                        if type(exc) is EffectRefused:  # (see commit_with_effects)
                            exc.__traceback__ = None
                        append((future, None, exc))  # nothing written: nothing to undo
                        continue
                    value = None
                    _user_code_returned(conn, guard)
                else:  # it may read the log: give it the rows deferred so far
                    pending.flush(conn)
                    value = fn(conn, *args)
            # The port's clean failures: raised before the operation wrote anything.
            except (LeaseLost, SagaNotFound, InvalidTransition) as exc:
                guard.active = False
                append((future, None, exc))
            except _TransactionEnded:
                raise
            except Exception:
                guard.active = False
                if conn.in_transaction:
                    execute(ROLLBACK)
                raise _Replay from None
            else:
                append((future, value, None))
        if pending:
            try:
                pending.flush(conn)
            except Exception:
                if conn.in_transaction:
                    execute(ROLLBACK)
                raise _Replay from None
        execute(_COMMIT)
        journals.settle()
    except (sqlite3.Error, _TransactionEnded) as exc:
        # The transaction itself failed (I/O error, disk full, user code ended it): no
        # operation can be reported as done, so every one fails (the engine then resumes its
        # sagas from whatever the log durably holds).
        guard.active = False
        if conn.in_transaction:
            conn.execute(ROLLBACK)
        error = translate(exc)
        return [(future, None, error) for future, _, _ in batch]
    return results


def resolve(results: list[Result]) -> None:
    """Wake every caller of a batch."""
    for future, value, error in results:
        if future.done():  # the caller was cancelled; its write is durable all the same
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
