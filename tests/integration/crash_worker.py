"""A process the crash tests run and SIGKILL: one 3-step saga on a SQLite saga log.

Every action and compensation applies its effect to a side database, keyed by the step's
idempotency key (INSERT OR IGNORE, like a participant that dedupes), and counts its calls. The
process kills itself with SIGKILL right after the Nth durable transition, or right after the
effect of a chosen action/compensation (before its outcome is recorded: the uncertain case).

    python crash_worker.py start|resume LOG_DB EFFECTS_DB VARIANT KILL_AFTER KILL_IN
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys

from sagaway import Engine, RetryPolicy, Saga, StepContext, StepFailed

OWNER = "crash-worker"  # stable: the restarted process takes its sagas back at once
KEY = "order-1"


def main() -> None:
    mode, log_db, effects_db, variant, kill_after, kill_in = sys.argv[1:7]
    kill_after_n = int(kill_after)
    effects = sqlite3.connect(effects_db, isolation_level=None)
    effects.execute("PRAGMA journal_mode=WAL")
    effects.execute("PRAGMA synchronous=FULL")
    effects.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, what TEXT)")
    effects.execute("CREATE TABLE IF NOT EXISTS calls (what TEXT, attempt INTEGER)")

    def apply(ctx: StepContext, what: str) -> None:
        effects.execute("INSERT INTO calls VALUES (?, ?)", (what, ctx.attempt))
        effects.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (ctx.idempotency_key, what))
        if mode == "start" and kill_in == what:
            os.kill(os.getpid(), signal.SIGKILL)

    saga = Saga("crash_checkout", version=1)
    fast = RetryPolicy(max_attempts=3, initial_delay=0)

    @saga.step(retry=fast)
    async def reserve(ctx: StepContext, order: dict[str, int]) -> str:
        apply(ctx, "reserve")
        return "reserved"

    @reserve.compensation
    async def release(ctx: StepContext, order: dict[str, int], out: str | None) -> None:
        apply(ctx, "release")

    @saga.step(retry=fast)
    async def pay(ctx: StepContext, order: dict[str, int]) -> int:
        apply(ctx, "pay")
        return order["amount"]

    @pay.compensation
    async def refund(ctx: StepContext, order: dict[str, int], out: int | None) -> None:
        apply(ctx, "refund")

    @saga.step(retry=fast)
    async def ship(ctx: StepContext, order: dict[str, int]) -> str:
        if variant == "fail":
            raise StepFailed("Invalid shipping address")
        apply(ctx, "ship")
        return "shipped"

    transitions = 0

    def count(record: object, change: object) -> None:
        nonlocal transitions
        transitions += 1
        if mode == "start" and transitions == kill_after_n:
            os.kill(os.getpid(), signal.SIGKILL)

    async def run() -> None:
        engine = Engine(f"sqlite:///{log_db}", sagas=[saga], owner_id=OWNER)
        engine.subscribe(count)
        async with engine:
            if mode == "start":
                saga_id = await engine.start(saga, {"amount": 5000}, idempotency_key=KEY)
                if kill_after_n == 0:  # right after the saga (and step 1 RUNNING) is durable
                    os.kill(os.getpid(), signal.SIGKILL)
            else:
                page = await engine.list_sagas(limit=1)
                saga_id = page.items[0].id
            record = await engine.wait(saga_id, timeout=60)
            print(record.status, flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
