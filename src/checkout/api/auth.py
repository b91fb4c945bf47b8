"""Who may act as the operator: ``SAGAWAY_ADMIN_TOKEN``.

Admin routes are the operator's actions (saga retry and cancel, ``POST /reset``, and any
operator signal added later) and every read that shows other customers' data (``/accounts``,
``/balances``, the lists of orders and sagas, a saga's detail with its input). They declare
``dependencies=[ADMIN]``, and:

* with a token configured, they need ``Authorization: Bearer <token>`` (else 401), in demo mode
  too: an operator who set a token wants it enforced;
* with no token, demo mode (``SAGAWAY_DEMO=true``, which ``checkout serve`` only serves on
  loopback then) leaves them open, and anything else refuses them (403) with how to enable them.

A customer's own routes (placing an order, reading it by its id, the catalog) need no token.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from checkout.settings import Settings

__all__ = ["ADMIN", "JSON_ONLY", "require_admin", "require_json"]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="SAGAWAY_ADMIN_TOKEN, for operator actions and other customers' data.",
)

NO_TOKEN = (
    "Admin endpoints are disabled: set SAGAWAY_ADMIN_TOKEN on the server and send "
    "'Authorization: Bearer <token>' (a demo with SAGAWAY_DEMO=true leaves them open)"
)
BAD_TOKEN = "This endpoint needs 'Authorization: Bearer <SAGAWAY_ADMIN_TOKEN>'"


def is_admin(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """True if the request may act as the operator (see the module's rule); raises the 403 of
    a server with admin endpoints disabled."""
    token = settings.admin_token
    if token is None:
        if settings.demo:
            return True
        raise HTTPException(403, NO_TOKEN)
    if credentials is None:
        return False
    # Constant time: how long the comparison takes says nothing about the token.
    return hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode())


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if not is_admin(request.app.state.services.settings, credentials):
        raise HTTPException(401, BAD_TOKEN, headers={"WWW-Authenticate": "Bearer"})


async def require_json(request: Request) -> None:
    """415 unless the request says its body is JSON: a cross-site HTML form cannot send that
    content type (a script on another site would need a CORS preflight, which we never grant),
    so a browser visiting another page cannot trigger the route."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "Send this request with 'Content-Type: application/json'")


ADMIN = Depends(require_admin)
JSON_ONLY = Depends(require_json)
