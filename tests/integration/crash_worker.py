"""A process the crash tests run and SIGKILL: one saga of ``crash_saga.py`` on a real saga log.

It starts the saga (``operator``: and retries it once it stops FAILED, as an operator would)
and kills itself at the point its kill plan names; the test then resumes the saga in-process on
the same log. If the plan never fires the worker prints the saga's final status and exits 0,
which the test reports as "not killed where intended".

    python crash_worker.py STORE_URL EFFECTS_DB VARIANT KILL_PLAN
"""

from __future__ import annotations

import asyncio
import sys

from crash_saga import KEY, OWNER, KillingClock, KillPlan, Participant, build_saga, die

from sagaway import Engine, SagaStatus


def main() -> None:
    store_url, effects_db, variant, spec = sys.argv[1:5]
    plan = KillPlan.parse(spec)
    saga = build_saga(variant, Participant(effects_db, plan))
    transitions = 0

    def count(record: object, change: object) -> None:
        nonlocal transitions
        transitions += 1
        if plan.point == "after" and transitions == plan.n:
            die()

    async def run() -> None:
        engine = Engine(store_url, sagas=[saga], owner_id=OWNER, clock=KillingClock(plan))
        engine.subscribe(count)
        async with engine:
            saga_id = await engine.start(saga, {"amount": 5000}, idempotency_key=KEY)
            if plan.point == "after" and plan.n == 0:  # the saga and step 1 RUNNING are durable
                die()
            record = await engine.wait(saga_id, timeout=60)
            if variant == "operator" and record.status is SagaStatus.FAILED:
                await engine.retry(saga_id)
                record = await engine.wait(saga_id, timeout=60)
            print(record.status, flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
