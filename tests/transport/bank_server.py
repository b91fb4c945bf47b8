"""The contract's bank participant served over HTTP in a process of its own, for crash tests.

``python bank_server.py DATABASE_URL [--crash-after-commit]`` binds a free port, prints it, and
serves ``participant_router`` with uvicorn. With ``--crash-after-commit`` the process SIGKILLs
itself right after the first command's transaction commits and before the reply is written:
the effect is durable, the caller sees its connection dropped.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import uvicorn
from fastapi import FastAPI

from sagaway.participant.http import participant_router
from sagaway.testing.transport_contract import FlakyParticipant, bank_participant
from sagaway.transport.base import Command, Reply


def main() -> None:
    url = sys.argv[1]
    crash = "--crash-after-commit" in sys.argv
    bank = bank_participant(url)
    if crash:
        handle = bank.handle

        async def handle_then_die(command: Command) -> Reply:
            await handle(command)  # committed: effect and inbox row are durable
            print(f"committed {command.message_id}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable")

        bank.handle = handle_then_die  # type: ignore[method-assign]
    assert isinstance(bank, FlakyParticipant)
    app = FastAPI()
    app.include_router(participant_router(bank))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
