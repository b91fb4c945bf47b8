"""Run the toy choreography over RabbitMQ, place one order, and SIGKILL this process right after
the bank's handler committed (its debit, its inbox row and its ``charged`` event in the outbox)
and before the delivery is acknowledged or the event published. Prints the order id first.

Usage: python crash_bank.py <urls as JSON> <amqp url> <saga store url>"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from choreokit import running
from sagaway.choreography import DomainEvent
from sagaway.choreography.rabbitmq import RabbitBus


async def main() -> None:
    urls, amqp, store_url = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    bus = RabbitBus(amqp, queue_type="classic")
    async with running(urls, bus, store_url) as toy:

        def die(_events: list[DomainEvent]) -> None:
            # Called right after the handler's transaction committed, before the relay is
            # woken and before the delivery is acknowledged.
            os.kill(os.getpid(), signal.SIGKILL)

        toy.bank._emitted = die  # type: ignore[method-assign]
        order_id = await toy.place(2_500, "Toronto")
        print(order_id, flush=True)
        await asyncio.sleep(30)  # killed long before
    raise SystemExit("the bank never received the event")


asyncio.run(main())
