"""Serving a participant over HTTP: a FastAPI router for saga commands.

``POST {prefix}/commands/{command}`` (prefix ``/saga`` by default) takes a ``Command`` as JSON,
with the ``Idempotency-Key`` header equal to its ``message_id`` (the sender's promise that a
retry carries the same key), and answers:

* 200 with the ``Reply`` as JSON: the command succeeded (now or on an earlier delivery);
* 409 ``{"detail": "<message>"}``: a business failure (recorded: a redelivery gets it again);
* 404: the participant has no such command; 400: the key and the body disagree, or the command
  is addressed to another participant; 422: the body is not a command. The HTTP dispatcher
  turns every 4xx with a message into a failed reply: the step fails and the saga compensates;
* 503 ``{"detail": ...}``: the participant could not process it now (its database is down...):
  nothing was recorded, the sender retries with the same key. Never a driver's raw text.

Mount it on the service's app next to its own routes (health, reads, docs)::

    app.include_router(participant_router(inventory, authorize=require_bearer(token)))

``authorize`` runs first on every command and raises an ``HTTPException`` to refuse it (401 or
403); ``require_bearer`` checks ``Authorization: Bearer <token>`` in constant time, and
``HttpDispatcher(token=...)`` sends it. The dispatcher treats a 401 or 403 as a transport error,
not as the participant's refusal: the command was never looked at, so the saga retries (an
operator mends the token) rather than compensating.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field, ValidationError

from sagaway.definition import describe_validation
from sagaway.participant.core import Participant, UnknownCommand
from sagaway.state import Phase
from sagaway.transport.base import Command

__all__ = ["Authorize", "CommandBody", "ReplyBody", "participant_router", "require_bearer"]

log = logging.getLogger("sagaway.participant")

IDEMPOTENCY_HEADER = "Idempotency-Key"

Authorize = Callable[[Request], None]


def require_bearer(token: str) -> Authorize:
    """An ``authorize`` that lets a command in only with ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        # Constant time: how long the comparison takes says nothing about the token.
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                401,
                "saga commands need 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return authorize


class CommandBody(BaseModel):
    """A saga command as it travels over HTTP (``Command.to_json``)."""

    message_id: str = Field(min_length=1, max_length=255)
    saga_id: str
    saga_name: str
    step: str
    phase: Literal["forward", "compensation"]  # Phase's values, inline in the OpenAPI schema
    attempt: int = Field(ge=1)
    participant: str
    command: str
    payload: Any = None
    forward_key: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    def to_command(self) -> Command:
        return Command(
            message_id=self.message_id,
            saga_id=self.saga_id,
            saga_name=self.saga_name,
            step=self.step,
            phase=Phase(self.phase),
            attempt=self.attempt,
            participant=self.participant,
            command=self.command,
            payload=self.payload,
            forward_key=self.forward_key,
            headers=self.headers,
        )


class ReplyBody(BaseModel):
    """A participant's reply (``Reply.to_json``)."""

    message_id: str
    saga_id: str
    step: str
    phase: Phase
    attempt: int
    participant: str
    ok: bool
    output: Any = None
    error: str | None = None


class ErrorBody(BaseModel):
    detail: str


_COMMAND_SCHEMA = CommandBody.model_json_schema()


def participant_router(
    participant: Participant, *, prefix: str = "/saga", authorize: Authorize | None = None
) -> APIRouter:
    """The router that serves ``participant``'s commands (see the module docstring)."""
    router = APIRouter(prefix=prefix, tags=["saga commands"])

    @router.post(
        "/commands/{command}",
        response_model=ReplyBody,
        summary="Run a saga command (idempotent on its message_id)",
        responses={
            400: {"model": ErrorBody, "description": "Idempotency-Key and body disagree"},
            401: {"model": ErrorBody, "description": "Not authorized (nothing was done)"},
            404: {"model": ErrorBody, "description": "No such command"},
            409: {"model": ErrorBody, "description": "Business failure (recorded)"},
            503: {"model": ErrorBody, "description": "Not processed: retry with the same key"},
            422: {"model": ErrorBody, "description": "The body is not a command"},
        },
        # The body and the header are read by hand (below); they are documented here.
        openapi_extra={
            "parameters": [
                {
                    "name": IDEMPOTENCY_HEADER,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The command's message_id",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _COMMAND_SCHEMA}},
            },
        },
    )
    async def run_command(command: str, request: Request) -> Response:
        # Parsed by hand, not as FastAPI parameters: its dependency machinery for a body
        # model and a header cost more CPU per command than the inbox's SQL (measured with
        # the ASGI app called in-process).
        if authorize is not None:
            authorize(request)
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
        try:
            body = CommandBody.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(
                422, f"the body is not a command: {describe_validation(exc)}"
            ) from None
        if idempotency_key is None:
            raise HTTPException(400, f"the {IDEMPOTENCY_HEADER} header is required")
        if idempotency_key != body.message_id:
            raise HTTPException(
                400,
                f"the {IDEMPOTENCY_HEADER} header ({idempotency_key!r}) must equal the "
                f"command's message_id ({body.message_id!r})",
            )
        if body.command != command:
            raise HTTPException(
                400, f"the body is command {body.command!r}, the path says {command!r}"
            )
        if body.participant != participant.name:
            raise HTTPException(
                400,
                f"the command is addressed to {body.participant!r}; "
                f"this is participant {participant.name!r}",
            )
        try:
            reply = await participant.handle(body.to_command())
        except UnknownCommand as exc:
            raise HTTPException(404, str(exc)) from None
        except Exception as exc:
            # Transient (or a bug): nothing was recorded; the sender retries with the same key.
            log.exception(
                "participant %s: %s %s failed", participant.name, command, body.message_id
            )
            raise HTTPException(
                503,
                f"{participant.name} could not process {command!r} now "
                f"({type(exc).__name__}); retry with the same {IDEMPOTENCY_HEADER}",
            ) from None
        if not reply.ok:
            raise HTTPException(409, reply.error or "failed")
        # A Response, not the dict: FastAPI would validate it against ReplyBody (kept for the
        # docs) and serialize it again, on every command.
        return Response(_dumps(reply.to_json()), media_type="application/json")

    return router


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
