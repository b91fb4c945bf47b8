"""``POST /orders`` answered without FastAPI's request machinery, for the requests FastAPI would
accept as they are.

Placing an order is the API's hot route. Through FastAPI each one pays its exception and
exit-stack middlewares, the router's matching, a ``Request``, the dependency solve of the body,
the ``Idempotency-Key`` header and the ``wait`` query, and the response's merge: ~0.47M
instructions an order, as counted, next to the ~3.4M the rest of an order costs (README,
"Session 14, lane http"). :class:`OrderFastPath` takes the requests whose every part it can read as
FastAPI would and with the same outcome: a body sent as ``application/json`` that parses to an
object ``OrderRequest`` validates, no query or exactly ``wait=<seconds>`` within its bounds, no
``Idempotency-Key`` or one that passes its pattern. Everything else (a malformed body, a 422, a
second key, another content type, a mounted app) goes on to the FastAPI route unchanged, which
answers it as it always did: what the fast path refuses costs its checks and nothing else, and
no error message is written twice. Nothing is placed before the request is known good, so
handing a refused request on places nothing twice.

A request it takes runs the route's own code (:func:`checkout.api.routes.orders.place`, and the
answer ``answer_of`` makes, sent as its two ASGI messages); an exception is answered by the app's
handlers as ``ExceptionMiddleware`` would (the handler of its nearest class), and one no handler
takes goes up to ``ServerErrorMiddleware`` as from the route. The matched route is written into
the scope, so the HTTP metrics label it ``/orders``. Off when FastAPI's telemetry is on (its
request spans would miss these requests): see :func:`checkout.api.app.create_app`.

It fails safe: what the route declares is checked once, at the first request, against what the
fast path reads (:func:`refusal`). A route that declares more (a dependency such as an auth
check, at the route, its router or the app; another query, header or cookie parameter; another
body model) turns the fast path off, with one warning saying why, and every order goes through
FastAPI until the fast path is taught the new part: it never answers while skipping one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from checkout.api.deps import DEFAULT_WAIT_SECONDS, IDEMPOTENCY_KEY_PATTERN, MAX_WAIT_SECONDS
from checkout.api.errors import MAX_BODY_BYTES, replay
from checkout.api.routes import orders
from checkout.api.routes.orders import answer_of, place
from checkout.api.schemas import OrderRequest

__all__ = ["OrderFastPath", "refusal"]

log = logging.getLogger("checkout.api")

# ``wait`` as a plain decimal: what ``float()`` and pydantic read alike (no sign, exponent,
# "inf" or "nan", no blanks); any other spelling is FastAPI's to read.
_WAIT = re.compile(rb"wait=([0-9]{1,3}(?:\.[0-9]{1,9})?)")
_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
_KEY_MAX = 200
_JSON = b"application/json"
_CONTENT_TYPE = (b"content-type", _JSON)
# The route's parameters the fast path reads, by kind: the body (``OrderRequest``), the ``wait``
# query and the ``Idempotency-Key`` header, and the ``Request`` it is handed.
_READS: dict[str, list[str]] = {"body": ["body"], "query": ["wait"], "header": ["idempotency_key"]}


class OrderFastPath:
    """See the module docstring; ``enabled=False`` hands every request on. Placed outside
    ``HeadAsGetMiddleware`` and ``BodyLimitMiddleware`` (a POST is no HEAD, and it takes only
    a body that ``Content-Length`` declares within ``max_bytes`` and that came whole: the
    rest is theirs to read and refuse), so an order crosses neither."""

    def __init__(self, app: ASGIApp, enabled: bool = True, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.enabled = enabled
        self.max_bytes = max_bytes
        self._route: Any = None
        self._handlers: dict[Any, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._route is None and self.enabled and scope["type"] == "http":
            self._bind(scope["app"])
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/orders"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        asked = _parameters(scope, self.max_bytes)
        if asked is None:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        raw = await _body(receive, received, self.max_bytes)
        body = None if raw is None else _order_request(raw)
        if body is None:
            await self.app(scope, replay(received, receive), send)
            return
        key, wait = asked
        app = scope["app"]
        scope["route"] = self._route
        scope["endpoint"] = self._route.endpoint
        scope["path_params"] = {}
        try:
            view, replayed = await place(app.state.services.checkout, body, key, wait)
        except Exception as exc:
            handler = _handler_for(self._handlers or {}, exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive, send), exc)
            exc.__traceback__ = None  # as Starlette does: a reused exception keeps no frames
            await response(scope, receive, send)
            return
        # What ``answered``'s Response sends, without building one: ``answer_of``'s headers,
        # then Content-Length and Content-Type as Starlette appends them.
        status, headers, document = answer_of(view, replayed)
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ]
        raw.append((b"content-length", str(len(document)).encode("latin-1")))
        raw.append(_CONTENT_TYPE)
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": document})

    def _bind(self, app: Any) -> None:
        """Take the route and the app's handlers, or turn off if the route declares what the
        fast path does not read."""
        route = _route_of()
        why = refusal(route, [*app.router.dependencies, *orders.router.dependencies])
        if why is not None:
            self.enabled = False
            log.warning("POST /orders fast path off, every order goes through FastAPI: %s", why)
            return
        self._route, self._handlers = route, _handlers_of(app)


def refusal(route: APIRoute, outer_dependencies: Sequence[Any] = ()) -> str | None:
    """Why the fast path must not answer for ``route`` (None: it reads all the route declares).
    ``outer_dependencies``: the app's and the router's, which FastAPI runs before the route."""
    if route.endpoint is not orders.create_order:
        return f"the route's endpoint is {route.endpoint!r}, not create_order"
    dependant = route.dependant
    if outer_dependencies or route.dependencies or dependant.dependencies:
        return "the route has dependencies, which the fast path would not run"
    declared = {
        "body": [param.name for param in dependant.body_params],
        "query": [param.name for param in dependant.query_params],
        "header": [param.name for param in dependant.header_params],
    }
    if declared != _READS or dependant.path_params or dependant.cookie_params:
        return f"the route reads {declared} (and path/cookie parameters), the fast path {_READS}"
    if dependant.body_params[0].field_info.annotation is not OrderRequest:
        return "the route's body is not an OrderRequest"
    return None


def _parameters(scope: Scope, max_bytes: int) -> tuple[str | None, float] | None:
    """``(Idempotency-Key, wait)`` when the headers and the query are as the fast path reads
    them (one ``application/json`` content type, one plain ``Content-Length`` within
    ``max_bytes``, at most one valid key, ``wait`` plain and in bounds), else None."""
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
    length: bytes | None = None
    key: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
        elif name == b"content-length":
            if (
                length is not None
                or not value.isdigit()
                or len(value) > 9
                or int(value) > max_bytes
            ):
                return None
            length = value
        elif name == b"idempotency-key":
            if key is not None:
                return None
            key = value.decode("latin-1")
            if len(key) > _KEY_MAX or _KEY.fullmatch(key) is None:
                return None
    if content_type != _JSON or length is None:
        return None
    return key, wait


async def _body(receive: Receive, received: list[Message], max_bytes: int) -> bytes | None:
    """The request's body, read whole (each message kept in ``received``, to be replayed if
    the request is handed on); None if the client left or it is over ``max_bytes``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        received.append(message)
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _order_request(raw: bytes) -> OrderRequest | None:
    """The order a request body asks for, or None where FastAPI is to answer."""
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
