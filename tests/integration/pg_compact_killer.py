"""Child process of ``test_postgres_compaction.py``: finishes saga ``s`` on the PostgreSQL log
at STORE_URL, and is held for the parent to kill it at MOMENT:

* ``before``: the finishing batch has committed, the compaction has not been sent;
* ``during``: the compaction statement is sent (the parent holds the saga's row lock, so it
  waits on PostgreSQL).

Prints ``HELD`` when it is there."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import sagaway.store.postgres as postgres
from sagaway.state import Change, Event, EventType, SagaStatus
from sagaway.store.postgres import PostgresStore

T0 = 1_000_000.0


async def main(url: str, moment: str) -> None:
    compact = postgres.compact_after

    async def held(conn: Any, statement: str, ids: list[str]) -> None:
        print("HELD", flush=True)
        if moment == "during":
            await compact(conn, statement, ids)
        await asyncio.Event().wait()  # until the parent kills us

    postgres.compact_after = held  # type: ignore[assignment]
    async with PostgresStore(url) as store:
        end = Event(T0 + 3, EventType.SAGA_SUCCEEDED)
        change = Change(status=SagaStatus.SUCCEEDED, events=[end], release_lease=True)
        await store.commit("s", "e1", change, T0 + 3)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
