"""A signaller the take crash test runs and SIGKILLs: it delivers signal ``evt-<id>`` to one
parked ``wait-crash`` saga and stops dead around the write that takes the saga and applies the
signal (``Change.take``): with ``before``, having read the saga and decided, just before that
write; with ``after``, just after it is durable, before ``signal`` returns. It prints what it
reached and waits to be killed.

    python take_crash_worker.py STORE_URL EFFECTS_DB before|after SAGA_ID
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from wait_crash_saga import Effects, build

from sagaway import Engine


async def run(store_url: str, effects_db: str, mode: str, saga_id: str) -> None:
    waiting, sleeping = build(Effects(effects_db))
    engine = Engine(
        store_url, sagas=[waiting, sleeping], owner_id=f"doomed-{mode}", recovery_interval=3600
    )
    async with engine:
        store = engine.store
        real_commit = store.commit

        async def commit(*args: Any, **kwargs: Any) -> Any:
            change = args[2]
            if change.take is None:
                return await real_commit(*args, **kwargs)
            if mode == "before":
                print("read", flush=True)  # decided on its read; nothing written yet
                await asyncio.sleep(3600)
            await real_commit(*args, **kwargs)
            print("written", flush=True)  # durable; the caller never hears of it
            await asyncio.sleep(3600)

        store.commit = commit  # type: ignore[method-assign]
        await engine.signal(saga_id, "confirmed", {"ok": True}, signal_id=f"evt-{saga_id}")
        print("returned", flush=True)  # never: the kill comes first


if __name__ == "__main__":
    asyncio.run(run(*sys.argv[1:5]))
