"""A process the remote crash tests run and SIGKILL: one saga of ``remote_crash_saga.py``.

    python remote_crash_worker.py STORE_URL PARTICIPANTS_DB VARIANT KILL_PLAN

If the plan never fires it prints the saga's final status and exits 0, which the test
reports as "not killed where intended".
"""

from __future__ import annotations

import asyncio
import sys

from remote_crash_saga import KEY, OWNER, KillPlan, Participants, build_saga, die

from sagaway import Engine


def main() -> None:
    store_url, participants_db, variant, spec = sys.argv[1:5]
    plan = KillPlan.parse(spec)
    participants = Participants(participants_db, plan)
    saga = build_saga(variant)
    transitions = 0

    def count(record: object, change: object) -> None:
        nonlocal transitions
        transitions += 1
        if plan.point == "after" and transitions == plan.n:
            die()  # committed, and its outbox message not yet published

    async def run() -> None:
        engine = Engine(
            store_url, sagas=[saga], owner_id=OWNER, transport=participants.dispatcher()
        )
        engine.subscribe(count)
        async with engine:
            saga_id = await engine.start(saga, {"qty": 2, "amount": 500}, idempotency_key=KEY)
            record = await engine.wait(saga_id, timeout=60)
            print(record.status, flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
