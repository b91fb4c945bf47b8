"""A worker the wait crash test runs and SIGKILLs: it starts N sagas of each kind of
``wait_crash_saga``, prints "parked" once every one is parked, then idles until killed.

    python wait_crash_worker.py STORE_URL EFFECTS_DB N
"""

from __future__ import annotations

import asyncio
import sys

from wait_crash_saga import Effects, build

from sagaway import Engine
from sagaway.hooks import Hook
from sagaway.state import SagaRecord


class AllParked(Hook):
    def __init__(self, n: int) -> None:
        self.left, self.done = n, asyncio.Event()

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


async def run(store_url: str, effects_db: str, n: int) -> None:
    waiting, sleeping = build(Effects(effects_db))
    parked = AllParked(2 * n)
    engine = Engine(store_url, sagas=[waiting, sleeping], owner_id="doomed", hooks=[parked])
    async with engine:
        for i in range(n):
            await engine.start(waiting, {"n": i}, idempotency_key=f"wait-{i}")
            await engine.start(sleeping, {"n": i}, idempotency_key=f"sleep-{i}")
        await parked.done.wait()
        print("parked", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], int(sys.argv[3])))
