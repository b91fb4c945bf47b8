"""A process that creates sagas under given idempotency keys on a PostgreSQL saga log, for the
test that two processes create the same keys at the same moment.

It opens its store, prints ``ready``, waits for a line on stdin (the test releases both
processes together), creates one saga per key, all at once, and prints a JSON object
``{key: [saga_id, created]}``.

    python pg_create_worker.py STORE_URL NAME KEYS
"""

from __future__ import annotations

import asyncio
import json
import sys

from sagaway.state import NewSaga
from sagaway.store.postgres import PostgresStore


async def main() -> None:
    url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async with PostgresStore(url) as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        keys = [f"key-{i:04}" for i in range(count)]
        results = await asyncio.gather(
            *(
                store.create(
                    NewSaga(
                        id=f"{name}-{key}",
                        name="race",
                        version=1,
                        input={"by": name},
                        at=1_000.0,
                        idempotency_key=key,
                    )
                )
                for key in keys
            )
        )
    print(json.dumps({key: list(result) for key, result in zip(keys, results, strict=True)}))


if __name__ == "__main__":
    asyncio.run(main())
