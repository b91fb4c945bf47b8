"""The transport contract over HTTP: a real uvicorn server on a free port serving
``participant_router``, called by ``HttpDispatcher``; plus what only HTTP has (status codes,
headers, connection failures, timeouts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from sqlalchemy.engine import Connection

import ports
from sagaway.participant import Participant
from sagaway.participant.http import participant_router, require_bearer
from sagaway.state import Phase
from sagaway.testing.transport_contract import (
    Bank,
    TransportContract,
    TransportHarness,
    bank_participant,
)
from sagaway.transport.base import Command, TransportError
from sagaway.transport.http import HttpDispatcher


class Server:
    """uvicorn serving ``app`` on a socket bound before it starts: the kernel queues
    connections until it serves, so nobody waits for "started"."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        self.sock.close()


def app_for(participant: Participant, seen: list[dict[str, str]] | None = None) -> FastAPI:
    app = FastAPI()
    app.include_router(participant_router(participant))
    if seen is not None:

        @app.middleware("http")
        async def record_headers(request: Request, call_next: Any) -> Response:
            seen.append(dict(request.headers))
            response: Response = await call_next(request)
            return response

    return app


class HttpHarness(TransportHarness):
    def __init__(self) -> None:
        self.dispatcher = HttpDispatcher(read_timeout=30.0)
        self.servers: list[Server] = []
        self.seen: list[dict[str, str]] = []

    async def register(self, participant: Participant) -> None:
        server = Server(app_for(participant, self.seen))
        self.servers.append(server)
        self.dispatcher.add(participant.name, server.url)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()


@pytest.fixture
async def http_transport() -> AsyncIterator[HttpHarness]:
    harness = HttpHarness()
    try:
        async with harness.dispatcher:
            yield harness
    finally:
        await harness.stop()


class TestHttpTransport(TransportContract):
    @pytest.fixture
    def transport(self, http_transport: HttpHarness) -> TransportHarness:
        return http_transport


# -- what only HTTP has -------------------------------------------------------------------------


@pytest.fixture
async def bank(tmp_path: Path, http_transport: HttpHarness) -> AsyncIterator[Bank]:
    bank = Bank(bank_participant(f"sqlite:///{tmp_path / 'bank.db'}"))
    await asyncio.to_thread(bank.setup)
    await http_transport.register(bank.participant)
    try:
        yield bank
    finally:
        await bank.participant.close()


async def test_every_call_carries_the_idempotency_key_and_the_command_headers(
    http_transport: HttpHarness, bank: Bank
) -> None:
    command = bank.command("debit", {"account": "alice", "amount": 1})
    assert (await http_transport.call(command)).ok
    (headers,) = http_transport.seen
    assert headers["idempotency-key"] == command.message_id
    assert headers["traceparent"] == command.headers["traceparent"]


async def test_a_router_with_a_token_runs_only_commands_that_carry_it(tmp_path: Path) -> None:
    """Without the token: 401, nothing done, and the sender sees a transient error (retried,
    never compensated for); with it, the command runs once."""
    bank = Bank(bank_participant(f"sqlite:///{tmp_path / 'bank.db'}"))
    await asyncio.to_thread(bank.setup)
    app = FastAPI()
    app.include_router(participant_router(bank.participant, authorize=require_bearer("s3cret")))
    server = Server(app)
    command = bank.command("debit", {"account": "alice", "amount": 10})
    try:
        for token in (None, "wrong"):
            async with HttpDispatcher({"bank": server.url}, token=token) as dispatcher:
                with pytest.raises(TransportError, match="HTTP 401"):
                    await dispatcher.call(command, 5.0)
        assert bank.effects() == 0
        async with HttpDispatcher({"bank": server.url}, token="s3cret") as dispatcher:
            reply = await dispatcher.call(command, 5.0)
        assert reply.ok, reply.error
        assert (bank.balance(), bank.effects(command.message_id)) == (90, 1)
    finally:
        await server.stop()
        await bank.participant.close()


async def test_the_router_answers_with_status_codes_and_messages(
    http_transport: HttpHarness, bank: Bank
) -> None:
    url = http_transport.servers[0].url + "/saga/commands/debit"
    command = bank.command("debit", {"account": "alice", "amount": 1})
    body = command.to_json()
    async with httpx.AsyncClient() as client:
        missing = await client.post(url, json=body)
        assert missing.status_code == 400
        assert "Idempotency-Key" in missing.json()["detail"]
        wrong = await client.post(url, json=body, headers={"Idempotency-Key": "other"})
        assert wrong.status_code == 400
        assert "must equal" in wrong.json()["detail"]
        key = {"Idempotency-Key": command.message_id}
        elsewhere = await client.post(url.replace("debit", "credit"), json=body, headers=key)
        assert elsewhere.status_code == 400
        unknown = bank.command("launch", {}, message_id="k-launch")
        response = await client.post(
            url.replace("debit", "launch"),
            json=unknown.to_json(),
            headers={"Idempotency-Key": "k-launch"},
        )
        assert response.status_code == 404
        assert "launch" in response.json()["detail"]
        poor = bank.command("debit", {"account": "alice", "amount": 999}, message_id="k-poor")
        response = await client.post(
            url, json=poor.to_json(), headers={"Idempotency-Key": "k-poor"}
        )
        assert (response.status_code, response.json()) == (409, {"detail": "insufficient funds"})
        not_a_command = await client.post(url, json={"hello": 1}, headers=key)
        assert not_a_command.status_code == 422
        bank.participant.fail_before = 1
        response = await client.post(url, json=body, headers=key)
        assert response.status_code == 503
        assert "retry with the same Idempotency-Key" in response.json()["detail"]
        ok = await client.post(url, json=body, headers=key)
        assert ok.status_code == 200
        assert ok.json()["ok"] is True
        assert ok.json()["output"] == {"account": "alice", "balance": 99}


async def test_an_unreachable_participant_is_a_transport_error() -> None:
    port = ports.free_port()  # nobody listens on it
    async with HttpDispatcher({"bank": f"http://127.0.0.1:{port}"}) as dispatcher:
        with pytest.raises(TransportError, match=r"bank\.debit"):
            await dispatcher.call(command_for("bank"), 5.0)


async def test_an_unknown_participant_is_a_failed_reply() -> None:
    async with HttpDispatcher({}) as dispatcher:
        reply = await dispatcher.call(command_for("nobody"), 5.0)
    assert not reply.ok
    assert reply.error is not None
    assert "nobody" in reply.error


async def test_a_participant_that_does_not_answer_in_time_is_a_timeout(tmp_path: Path) -> None:
    release = threading.Event()
    slow = Participant("slow", f"sqlite:///{tmp_path / 'slow.db'}")
    slow.create_inbox()

    @slow.handler("debit")
    def debit(conn: Connection, payload: Any) -> None:
        release.wait(30)

    server = Server(app_for(slow))
    try:
        async with HttpDispatcher({"slow": server.url}, read_timeout=30.0) as dispatcher:
            with pytest.raises(TimeoutError, match=r"slow\.debit"):
                await dispatcher.call(command_for("slow"), 0.2)
        # No call timeout: the read timeout bounds it.
        async with HttpDispatcher({"slow": server.url}, read_timeout=0.2) as dispatcher:
            with pytest.raises(TimeoutError):
                await dispatcher.call(command_for("slow", "s1:x:2"), None)
    finally:
        release.set()
        await server.stop()
        await slow.close()


async def test_a_server_error_is_a_transport_error() -> None:
    app = FastAPI()

    @app.post("/saga/commands/debit")
    async def broken() -> Response:
        return Response("upstream exploded", status_code=502)

    server = Server(app)
    try:
        async with HttpDispatcher({"bank": server.url}) as dispatcher:
            with pytest.raises(TransportError, match="HTTP 502: upstream exploded"):
                await dispatcher.call(command_for("bank"), 5.0)
    finally:
        with contextlib.suppress(Exception):
            await server.stop()


def command_for(participant: str, message_id: str = "s1:debit:forward") -> Command:
    return Command(
        message_id=message_id,
        saga_id="s1",
        saga_name="test",
        step="debit",
        phase=Phase.FORWARD,
        attempt=1,
        participant=participant,
        command="debit",
        payload={"account": "alice", "amount": 1},
    )


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (409, b'{"detail": "insufficient funds"}', "failure: insufficient funds"),
        (
            422,
            b'{"detail": [{"loc": ["body", "attempt"], "msg": "field required"}]}',
            "failure: body.attempt: field required",
        ),
        (404, b"no such route", "failure: no such route"),
        (400, b"", "failure: HTTP 400 from bank.debit"),
        (401, b'{"detail": "needs a token"}', "transient: HTTP 401: needs a token"),
        (403, b"", "transient: HTTP 403"),
        (408, b'{"detail": "too slow"}', "transient: HTTP 408: too slow"),
        (429, b"", "transient: HTTP 429"),
        (500, b"Internal Server Error", "transient: HTTP 500: Internal Server Error"),
        (503, b'{"detail": "retry"}', "transient: HTTP 503: retry"),
        (200, b"<html>", "transient: not a reply"),
    ],
)
def test_status_codes_map_onto_the_port(status: int, body: bytes, outcome: str) -> None:
    from sagaway.transport.http import _reply

    command = command_for("bank")
    kind, _, expected = outcome.partition(": ")
    if kind == "failure":
        reply = _reply(command, "http://bank", status, body)
        assert (reply.ok, reply.error) == (False, expected)
        assert reply.message_id == command.message_id
    else:
        with pytest.raises(TransportError, match=expected):
            _reply(command, "http://bank", status, body)
