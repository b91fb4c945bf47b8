"""Which shop-database errors mean "the database is unreachable right now", and what the
service does about them.

A dropped or refused connection is not a bug and not a business outcome: it is transient, and
each layer answers it its own way:

* the pool discards the connection (SQLAlchemy's ``pool_pre_ping`` and its disconnect
  check), so no later transaction reuses a dead one;
* a saga step raises :class:`ShopUnavailable` (a fixed, readable message; the driver's text only
  goes to the log), which the step's retry policy rides out (see :mod:`checkout.sagas`);
* the API answers 503 (see :mod:`checkout.api.errors`), or 202 when the order was already
  recorded (see :mod:`checkout.service`).

What counts (:func:`is_connection_error`): PostgreSQL's connection-exception class (SQLSTATE
``08xxx``), "too many clients" (``53300``), the server shutting down or starting up (``57P01``
to ``57P03``), a database that accepts no connections (``55000`` at connect), socket errors, and
the client-side errors asyncpg raises on a connection the server closed under it
(``InterfaceError: connection is closed``, ``InternalClientError: cannot switch to state 12``).
SQLAlchemy's own disconnect flag and pool timeout count too, and SQLite's busy/locked errors
(another writer holds the file past the busy timeout).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import exc as sa_exc

from sagaway import StoreError

__all__ = [
    "SHOP_UNAVAILABLE",
    "NotConnected",
    "ShopError",
    "ShopUnavailable",
    "is_connection_error",
    "is_unavailable",
    "readable",
]

log = logging.getLogger("checkout.db")

SHOP_UNAVAILABLE = "The shop database is unavailable"
SHOP_ERROR = "The shop database refused the operation"

# SQLSTATEs of an unusable connection or server (not of a statement that is wrong).
_SQLSTATE_CLASSES = ("08",)  # connection_exception and its subclasses
_SQLSTATES = {
    "53300",  # too_many_connections ("sorry, too many clients already")
    "57P01",  # admin_shutdown (pg_terminate_backend, a fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down)
    "55000",  # object_not_in_prerequisite_state: "database ... not accepting connections"
}
_SQLITE_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED: another connection holds the file
# asyncpg's client-side errors on a connection the server closed or left mid-protocol.
_CLIENT_ERRORS = {"InterfaceError", "InternalClientError", "ConnectionDoesNotExistError"}


class ShopUnavailable(Exception):
    """The shop database could not be reached; the operation did not happen (or, for a
    write whose commit was cut off, its outcome is unknown: it is retried with its key)."""

    def __init__(self, message: str = SHOP_UNAVAILABLE) -> None:
        super().__init__(message)


class NotConnected(ShopUnavailable):
    """No connection to the shop database could be had: nothing was sent, nothing written."""


class ShopError(Exception):
    """The shop database refused an operation for a reason that is not a business rule; the
    driver's text is in the log, never in an order or a response."""

    def __init__(self, message: str = SHOP_ERROR) -> None:
        super().__init__(message)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error SQLAlchemy wraps, and their causes (a bounded walk)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return seen


def _sqlstate(exc: BaseException) -> str | None:
    code: Any = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return code if isinstance(code, str) else None


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the shop database cannot be used right now (see the module
    docstring), as opposed to a statement it refused."""
    for error in _chain(exc):
        if isinstance(error, ShopUnavailable):
            return True
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.DisconnectionError | sa_exc.TimeoutError | OSError):
            return True  # OSError: refused, reset, unreachable; TimeoutError is one too
        if getattr(error, "sqlite_errorcode", None) in _SQLITE_BUSY:
            return True
        state = _sqlstate(error)
        if state is not None and (state in _SQLSTATES or state.startswith(_SQLSTATE_CLASSES)):
            return True
        if type(error).__name__ in _CLIENT_ERRORS and type(error).__module__.startswith("asyncpg"):
            return True
    return False


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means a database the service needs cannot be used now: the shop's
    (:func:`is_connection_error`) or the saga log's (``StoreError``)."""
    return isinstance(exc, StoreError) or is_connection_error(exc)


def readable(exc: BaseException, doing: str) -> ShopUnavailable | ShopError:
    """The customer-safe error for the database error ``exc`` raised while ``doing``
    something; the driver's text is logged here and never leaves the service."""
    if is_unavailable(exc):
        log.warning("%s: shop database unavailable: %s", doing, _first_line(exc))
        return ShopUnavailable()
    log.error("%s: shop database error: %s", doing, exc)
    return ShopError()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
