"""A participant process the RabbitMQ crash test SIGKILLs: the contract's bank participant
(``sagaway.testing.transport_contract``) on a SQLite file, served over RabbitMQ. After each
commit it prints ``committed <message_id>`` and then never replies, so the test can kill it
with the effect durable and the reply not sent.

    python rabbit_crash_participant.py AMQP_URL SQLITE_URL
"""

from __future__ import annotations

import asyncio
import sys

from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.testing.transport_contract import bank_participant
from sagaway.transport.base import Command, Reply


def main() -> None:
    url, database = sys.argv[1:3]
    bank = bank_participant(database)

    async def handle(command: Command) -> Reply:
        await bank.handle(command)
        print(f"committed {command.message_id}", flush=True)
        await asyncio.Event().wait()  # the reply never leaves: SIGKILL comes first
        raise AssertionError("unreachable")

    async def serve() -> None:
        async with RabbitParticipant(handle, url, queue="bank", participants=("bank",)):
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
