"""Errors are always ``{"detail": "..."}`` and bad input is never a 500.

* Validation errors -> 422 with one readable line (``body.items.0.quantity: Input should be
  greater than 0``); malformed JSON -> 400; a body not sent as JSON (no or another
  ``content-type``) -> 415 naming ``application/json``.
* Bodies over :data:`MAX_BODY_BYTES` -> 413, enforced by :class:`BodyLimitMiddleware` before the
  app reads anything: ``Content-Length`` is checked first, then the stream is counted (a chunked
  body that lies cannot get past it).
* ``SagaNotFound`` / unknown orders -> 404, ``InvalidTransition`` and an order id taken by
  another order -> 409, a store outage -> 503, a shop-database outage (a connection-level
  error, see :mod:`checkout.dbfaults`) -> 503, and placing an order while a database is down
  -> 503 only if the order was not recorded (the message says so; see :mod:`checkout.service`).
  An id echoed in a message is cut to :data:`ECHO_CHARS` characters.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkout.api.methods import allowed_methods, options_response
from checkout.dbfaults import ShopUnavailable, is_connection_error
from checkout.service import (
    AmountMismatch,
    IdempotencyKeyReused,
    OrderConflict,
    OrderNotFound,
    OrderUnavailable,
)
from sagaway import InvalidTransition, SagaNotFound, SagawayError, StoreError

log = logging.getLogger("checkout.api")

MAX_BODY_BYTES = 64 * 1024
ECHO_CHARS = 64  # the longest id we generate or accept in a body
RETRY_SOON = {"Retry-After": "1"}  # a database blip: worth another try shortly
SHOP_DOWN = "The shop database is unavailable; try again"


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def echoed(value: str) -> str:
    """``value`` as a message may quote it: client input, so at most :data:`ECHO_CHARS`."""
    return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…"


def _not_json(request: Request, exc: RequestValidationError) -> JSONResponse | None:
    """415 when the route wanted a JSON body and got one it did not parse as JSON: FastAPI
    only parses a body declared ``application/json`` (or ``+json``), else hands the model the
    raw bytes, which fail as "Input should be a valid dictionary"."""
    if not isinstance(exc.body, bytes | bytearray):
        return None
    got = request.headers.get("content-type")
    sent = f"got content-type {echoed(got)!r}" if got else "no content-type was given"
    return problem(
        415,
        f"Send the request body as JSON with 'content-type: application/json' ({sent})",
        headers={"Accept-Post": "application/json"},
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def describe_validation(exc: RequestValidationError) -> tuple[int, str]:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
        return 400, f"Malformed JSON body: {reason.get('error', 'cannot be parsed')}"
    parts = []
    for e in errors[:10]:
        message = str(e.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        where = _location(e.get("loc", ()))
        parts.append(f"{where}: {message}" if where else message)
    return 422, "; ".join(parts) or "Invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        unsupported = _not_json(request, exc)
        if unsupported is not None:
            return unsupported
        status, detail = describe_validation(exc)
        return problem(status, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # the path exists: say what it takes (see api.methods)
            if request.method == "OPTIONS":
                return options_response(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(OrderNotFound)
    async def _order_not_found(_: Request, exc: OrderNotFound) -> JSONResponse:
        return problem(404, f"Order {echoed(exc.order_id)} not found")

    @app.exception_handler(SagaNotFound)
    async def _saga_not_found(_: Request, exc: SagaNotFound) -> JSONResponse:
        return problem(404, f"Saga {echoed(exc.saga_id)} not found")

    @app.exception_handler(IdempotencyKeyReused)
    async def _key_reused(_: Request, exc: IdempotencyKeyReused) -> JSONResponse:
        return problem(422, str(exc))

    @app.exception_handler(AmountMismatch)
    async def _amount(_: Request, exc: AmountMismatch) -> JSONResponse:
        return problem(422, str(exc))

    @app.exception_handler(OrderConflict)
    async def _order_conflict(_: Request, exc: OrderConflict) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(InvalidTransition)
    async def _conflict(_: Request, exc: InvalidTransition) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(OrderUnavailable)
    async def _not_recorded(_: Request, exc: OrderUnavailable) -> JSONResponse:
        return problem(503, str(exc), RETRY_SOON)

    @app.exception_handler(ShopUnavailable)
    async def _shop_unavailable(_: Request, exc: ShopUnavailable) -> JSONResponse:
        log.warning("shop database unavailable: %s", exc.__cause__ or exc)
        return problem(503, SHOP_DOWN, RETRY_SOON)

    @app.exception_handler(SQLAlchemyError)
    async def _shop_database(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        if is_connection_error(exc):
            log.warning("shop database unavailable: %s", exc)
            return problem(503, SHOP_DOWN, RETRY_SOON)
        log.error("shop database error", exc_info=exc)
        return problem(500, "Internal server error")

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        log.error("saga store error: %s", exc)
        return problem(503, "The saga log is unavailable; try again", RETRY_SOON)

    @app.exception_handler(SagawayError)
    async def _sagaway(_: Request, exc: SagawayError) -> JSONResponse:
        log.error("sagaway error: %s", exc)
        return problem(500, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "Internal server error")


class BodyLimitMiddleware:
    """Answer 413 to any HTTP request whose body exceeds ``max_bytes``.

    The body is read (at most ``max_bytes`` + one chunk) before the app runs and replayed to
    it, so the app never sees a partial body and the limit holds for chunked uploads too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await problem(400, "Invalid Content-Length header")(scope, receive, send)
                    return
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, replay([message], receive), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, replay([whole], receive), send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"Request body too large (limit {self.max_bytes} bytes)",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def replay(messages: list[Message], receive: Receive) -> Receive:
    queue = list(messages)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed
