"""Which methods a path allows, for ``OPTIONS`` and for the ``Allow`` header of a 405.

Starlette answers a method a route does not take with the ``Allow`` of the *first* route whose
path matched, so ``DELETE /orders`` said ``Allow: POST`` although ``GET /orders`` exists too,
and ``OPTIONS`` got that same 405. Both go through the 405 handler
(:func:`checkout.api.errors.install_error_handlers`), which asks :func:`allowed_methods` for
the union over every route of the path: requests that match a route pay nothing for it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

__all__ = ["allowed_methods", "options_response"]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes on this request's path, plus ``OPTIONS``.

    Each method is probed through the routes' own ``matches`` (FastAPI nests included
    routers, so the routes cannot simply be listed)."""
    allowed = {"OPTIONS"}
    routes = request.app.router.routes
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.add(method)
    if "GET" in allowed:
        allowed.add("HEAD")  # every GET route answers HEAD (checkout.api.head)
    return sorted(allowed)


def options_response(request: Request) -> Response:
    """``204`` with ``Allow``: the answer to ``OPTIONS`` on a path that exists."""
    return Response(status_code=204, headers={"Allow": ", ".join(allowed_methods(request))})
