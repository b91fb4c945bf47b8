"""Child process of ``test_outbox_crash.py``: commits, for saga after saga, the write a remote
step makes (its RUNNING row, its command in the outbox, the park), many at once, and prints
``ack <saga id>`` once each is acknowledged, until the test SIGKILLs it."""

from __future__ import annotations

import asyncio
import sys

from sagaway.state import (
    Change,
    Event,
    EventType,
    OutboxMessage,
    Park,
    Phase,
    StepRecord,
    StepStatus,
)
from sagaway.store import open_store

OWNER = "writer"
T0 = 1_000.0


def remote_start(saga_id: str) -> Change:
    return Change(
        steps=[StepRecord("reserve", Phase.FORWARD, StepStatus.RUNNING, 1, started_at=T0)],
        events=[Event(at=T0, type=EventType.STEP_STARTED, step="reserve", attempt=1)],
        outbox=(
            OutboxMessage(f"{saga_id}:reserve#1", saga_id, "inventory.reserve", {"s": saga_id}, T0),
        ),
        park=Park("reply:inventory.reserve", T0 + 30),
    )


async def main(url: str, ids: list[str]) -> None:
    async with open_store(url) as store:

        async def one(saga_id: str) -> None:
            await store.commit(saga_id, OWNER, remote_start(saga_id), T0)
            sys.stdout.write(f"ack {saga_id}\n")
            sys.stdout.flush()

        for first in range(0, len(ids), 16):  # 16 in flight: they share group commits
            await asyncio.gather(*(one(i) for i in ids[first : first + 16]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2].split(",")))
