"""``checkout participant ...`` or ``checkout serve`` (the gateway) with crash-test gates.

The SIGKILL tests of the checkout as separate services need a process killed in a precise
state, not one that merely happened to be slow. Gates, from the environment:

* ``CRASH_HOLD_COMMAND=payment.start`` (a participant): every delivery of that command is
  processed (its effect and inbox row committed), then held before its reply leaves, printing
  ``GATE command <message_id>``, until the process dies;
* ``CRASH_RELEASE_ON_USR1=1``: held calls go on once the process gets SIGUSR1 (instead of being
  held until it dies), so a test can change the world (stop the broker) in between;
* ``CRASH_HOLD_BEFORE=shipping.create`` (a participant): every delivery of that command is held
  before it is processed (nothing committed, no reply: an unresponsive service), printing
  ``GATE before <message_id>``, until the process dies;
* ``CRASH_HOLD_PUBLISH=1`` (a gateway over RabbitMQ): every relay publish is held before the
  broker sees it (the transition and its outbox message committed), printing ``GATE publish
  <message ids>``, until the process dies;
* ``CRASH_HOLD_EVENT=order-confirmed`` (a service running seed 004's pay-later part): every
  publish of that domain event by the relay is held before the bus sees it (the handler's or
  route's transaction, with the event in the service's outbox, committed), printing ``GATE
  event <type> <event ids>``, until the process dies;
* ``CRASH_STEP_ATTEMPTS=N`` (a gateway): the forward steps get N attempts, at most
  ``CRASH_STEP_MAX_DELAY`` seconds apart (default 0.1), instead of the checkout's eight: few,
  so that a participant that stays down exhausts them in a test's time; or many, so that a
  killed participant's restart (slow on a loaded machine) never does.

    python gated_services.py participant payment --transport http --port 8001
    python gated_services.py serve --port 8000
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from typing import Any

import checkout.sagas
from checkout.cli import main
from sagaway import RetryPolicy
from sagaway.participant.core import Participant
from sagaway.state import OutboxMessage
from sagaway.transport import Command, Reply

HOLD_COMMAND = os.environ.get("CRASH_HOLD_COMMAND", "")
HOLD_BEFORE = os.environ.get("CRASH_HOLD_BEFORE", "")
HOLD_PUBLISH = os.environ.get("CRASH_HOLD_PUBLISH") == "1"
HOLD_EVENT = os.environ.get("CRASH_HOLD_EVENT", "")
ATTEMPTS = int(os.environ.get("CRASH_STEP_ATTEMPTS", "0"))
MAX_DELAY = float(os.environ.get("CRASH_STEP_MAX_DELAY", "0.1"))


RELEASE_ON_USR1 = os.environ.get("CRASH_RELEASE_ON_USR1") == "1"
released: asyncio.Event | None = None


async def hold(line: str) -> None:
    global released
    if released is None:
        released = asyncio.Event()  # never set without CRASH_RELEASE_ON_USR1: held until killed
        if RELEASE_ON_USR1:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, released.set)
    print(f"GATE {line}", flush=True)
    await released.wait()


if HOLD_COMMAND or HOLD_BEFORE:
    real_handle = Participant.handle

    async def handle(self: Participant, command: Command) -> Reply:
        topic = f"{command.participant}.{command.command}"
        if topic == HOLD_BEFORE:
            await hold(f"before {command.message_id}")
        reply = await real_handle(self, command)
        if topic == HOLD_COMMAND:
            await hold(f"command {command.message_id}")
        return reply

    Participant.handle = handle  # type: ignore[method-assign]

if HOLD_PUBLISH:
    from sagaway.transport.rabbitmq import RabbitDispatcher

    async def publish(self: RabbitDispatcher, messages: Sequence[OutboxMessage]) -> None:
        await hold("publish " + " ".join(m.id for m in messages))

    RabbitDispatcher.publish = publish  # type: ignore[method-assign]

if HOLD_EVENT:
    from sagaway.choreography.events import DomainEvent
    from sagaway.choreography.http import HttpBus
    from sagaway.choreography.rabbitmq import RabbitBus

    def held(real: Any) -> Any:
        async def publish(self: Any, events: Sequence[DomainEvent]) -> None:
            ids = [e.id for e in events if e.type == HOLD_EVENT]
            if ids:
                await hold(f"event {HOLD_EVENT} " + " ".join(ids))
            await real(self, events)

        return publish

    HttpBus.publish = held(HttpBus.publish)  # type: ignore[method-assign]
    RabbitBus.publish = held(RabbitBus.publish)  # type: ignore[method-assign]

if ATTEMPTS:
    checkout.sagas.STEP_RETRY = RetryPolicy(  # read when the saga is built
        max_attempts=ATTEMPTS, initial_delay=0.05, max_delay=MAX_DELAY, jitter=0
    )

if __name__ == "__main__":
    main()
