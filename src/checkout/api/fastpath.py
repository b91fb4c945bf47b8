"""``POST /orders`` answered without FastAPI's request machinery, for the requests FastAPI would
accept as they are.

Placing an order is the API's hot route. Through FastAPI each one pays its exception and
exit-stack middlewares, the router's matching, a ``Request``, the dependency solve of the body,
the ``Idempotency-Key`` header and the ``wait`` query, and the response's merge: ~0.4M
instructions an order, as counted, next to the ~3.5M the order itself costs (README, "Session
14, lane http"). :class:`OrderFastPath` takes the requests whose every part it can read as
FastAPI would and with the same outcome: a body sent as ``application/json`` that parses to an
object ``OrderRequest`` validates, no query or exactly ``wait=<seconds>`` within its bounds, no
``Idempotency-Key`` or one that passes its pattern. Everything else (a malformed body, a 422, a
second key, another content type, a mounted app) goes on to the FastAPI route unchanged, which
answers it as it always did: what the fast path refuses costs its checks and nothing else, and
no error message is written twice. Nothing is placed before the request is known good, so
handing a refused request on places nothing twice.

A request it takes runs the route's own code (:func:`checkout.api.routes.orders.place` and
``answered``); an exception is answered by the app's handlers as ``ExceptionMiddleware`` would
(the handler of its nearest class), and one no handler takes goes up to
``ServerErrorMiddleware`` as from the route. The matched route is written into the scope, so
the HTTP metrics label it ``/orders``. Off when FastAPI's telemetry is on (its request spans
would miss these requests): see :func:`checkout.api.app.create_app`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkout.api.deps import DEFAULT_WAIT_SECONDS, IDEMPOTENCY_KEY_PATTERN, MAX_WAIT_SECONDS
from checkout.api.errors import replay
from checkout.api.routes import orders
from checkout.api.routes.orders import answered, place
from checkout.api.schemas import OrderRequest

__all__ = ["OrderFastPath"]

# ``wait`` as a plain decimal: what ``float()`` and pydantic read alike (no sign, exponent,
# "inf" or "nan", no blanks); any other spelling is FastAPI's to read.
_WAIT = re.compile(rb"wait=([0-9]{1,3}(?:\.[0-9]{1,9})?)")
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_KEY_MAX = 200
_JSON = b"application/json"


class OrderFastPath:
    """See the module docstring; ``enabled=False`` hands every request on."""

    def __init__(self, app: ASGIApp, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled
        self._route: Any = None
        self._handlers: dict[Any, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/orders"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        asked = _parameters(scope)
        if asked is None:
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = _order_request(message)
        if body is None:
            await self.app(scope, replay([message], receive), send)
            return
        key, wait = asked
        app = scope["app"]
        if self._route is None:
            self._route, self._handlers = _route_of(), _handlers_of(app)
        scope["route"] = self._route
        scope["endpoint"] = self._route.endpoint
        scope["path_params"] = {}
        try:
            view, replayed = await place(app.state.services.checkout, body, key, wait)
            response = answered(view, replayed)
        except Exception as exc:
            handler = _handler_for(self._handlers or {}, exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive, send), exc)
            exc.__traceback__ = None  # as Starlette does: a reused exception keeps no frames
        await response(scope, receive, send)


def _parameters(scope: Scope) -> tuple[str | None, float] | None:
    """``(Idempotency-Key, wait)`` when the headers and the query are as the fast path reads
    them (one ``application/json`` content type, at most one valid key, ``wait`` plain and in
    bounds), else None."""
    query: bytes = scope["query_string"]
    wait = DEFAULT_WAIT_SECONDS
    if query:
        found = _WAIT.fullmatch(query)
        if found is None:
            return None
        wait = float(found[1])
        if wait > MAX_WAIT_SECONDS:
            return None
    content_type: bytes | None = None
    key: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
        elif name == b"idempotency-key":
            if key is not None:
                return None
            key = value.decode("latin-1")
            if len(key) > _KEY_MAX or _KEY.fullmatch(key) is None:
                return None
    if content_type != _JSON:
        return None
    return key, wait


def _order_request(message: Message) -> OrderRequest | None:
    """The order a complete request body asks for, or None where FastAPI is to answer."""
    if message["type"] != "http.request" or message.get("more_body", False):
        return None
    raw = message.get("body", b"")
    if not raw:
        return None
    try:
        data = json.loads(raw)  # what Starlette's Request.json() does
    except ValueError:  # not JSON, or not UTF-8/16/32
        return None
    if type(data) is not dict:
        return None
    try:
        return OrderRequest.model_validate(data, from_attributes=True)  # as FastAPI does
    except ValidationError:
        return None


def _route_of() -> APIRoute:
    """The route FastAPI writes into the scope for ``POST /orders``: the router's own."""
    for route in orders.router.routes:
        if isinstance(route, APIRoute) and route.path == "/orders" and "POST" in route.methods:
            return route
    raise LookupError("no POST /orders route")


def _handlers_of(app: Any) -> dict[Any, Any]:
    """The handlers ``ExceptionMiddleware`` holds: every class's but ``Exception``'s, which
    ``ServerErrorMiddleware`` calls for what nothing else took."""
    return {
        key: handler
        for key, handler in app.exception_handlers.items()
        if isinstance(key, type) and key is not Exception
    }


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None
