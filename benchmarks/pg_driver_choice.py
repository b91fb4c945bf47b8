"""Which PostgreSQL driver for the saga store: asyncpg or psycopg 3 (async)? Measured, not guessed.

Replays the engine's commit pattern: C sagas in flight, each transition one fenced UPDATE of the
instance row + an upsert of 2 step rows + 2 event rows, atomically. Three ways to send it:

* ``txn``   one transaction per transition: BEGIN, UPDATE, steps, events, COMMIT (5 round trips)
* ``cte``   one data-modifying CTE statement per transition (1 round trip, autocommit)
* ``batch`` group commit: one CTE statement (arrays) for every transition queued (1 round trip
  per batch, 2 connections)

Run: ``python benchmarks/pg_driver_choice.py --url postgresql://root@127.0.0.1/test``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

SCHEMA = "sagaway_driver_bench"
DDL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.inst (id text PRIMARY KEY, owner text, status text, updated_at float8,
  events int NOT NULL DEFAULT 0) WITH (fillfactor = 80);
CREATE TABLE {SCHEMA}.steps (saga_id text, name text, status text, output jsonb,
  PRIMARY KEY (saga_id, name));
CREATE TABLE {SCHEMA}.events (saga_id text, seq int, at float8, type text,
  PRIMARY KEY (saga_id, seq));
"""
# $1 ids, $2 owners, $3 at, $4 n events per op | $5..$8 steps | $9..$12 events
CTE = f"""
WITH op AS (SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::int[])
              AS o(id, owner, at, n)),
upd AS (UPDATE {SCHEMA}.inst i SET updated_at = op.at, events = i.events + op.n FROM op
        WHERE i.id = op.id AND i.owner = op.owner RETURNING i.id, i.events - op.n AS base),
st AS (INSERT INTO {SCHEMA}.steps SELECT s.saga_id, s.name, s.status, s.output::jsonb
       FROM unnest($5::text[], $6::text[], $7::text[],
         $8::text[]) AS s(saga_id, name, status, output) JOIN upd ON upd.id = s.saga_id
       ON CONFLICT (saga_id, name) DO UPDATE SET status = excluded.status,
         output = excluded.output),
ev AS (INSERT INTO {SCHEMA}.events SELECT e.saga_id, upd.base + e.k, e.at, e.type
       FROM unnest($9::text[], $10::int[], $11::float8[], $12::text[]) AS e(saga_id, k, at, type)
       JOIN upd ON upd.id = e.saga_id)
SELECT op.id, upd.id IS NOT NULL FROM op LEFT JOIN upd ON upd.id = op.id
"""


def args_for(ops: list[tuple[str, int]]) -> list[Any]:
    ids = [i for i, _ in ops]
    out = json.dumps({"reservation": [1, 2, 3], "amount": 5000})
    s_ids = [i for i in ids for _ in range(2)]
    s_names = [f"step{k}{j}" for _, k in ops for j in range(2)]
    return [
        ids,
        ["bench"] * len(ids),
        [float(k) for _, k in ops],
        [2] * len(ids),
        s_ids,
        s_names,
        ["SUCCEEDED"] * len(s_ids),
        [out] * len(s_ids),
        s_ids,
        [j for _ in ids for j in range(2)],
        [1.0] * len(s_ids),
        ["step"] * len(s_ids),
    ]


class Batcher:
    """The store's group commit in miniature: take everything queued, send one statement."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[None]], inflight: int) -> None:
        self.run, self.queue, self.slots = run, [], asyncio.Semaphore(inflight)
        self.wake = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, op: tuple[str, int]) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((op, future))
        self.wake.set()
        return future

    async def loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self.slots.acquire()
                batch, self.queue = self.queue, []
                task = asyncio.create_task(self.flush(batch))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def flush(self, batch: list[Any]) -> None:
        try:
            await self.run(args_for([op for op, _ in batch]))
        finally:
            self.slots.release()
        for _, future in batch:
            future.set_result(None)


async def measure(name: str, url: str, mode: str, sagas: int, transitions: int) -> float:
    ids = [f"saga-{i}" for i in range(sagas)]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as setup:
        await setup.execute(DDL)
        async with setup.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {SCHEMA}.inst VALUES (%s, 'bench', 'RUNNING', 0)", [(i,) for i in ids]
            )
    conns = sagas if mode != "batch" else 2
    if name == "asyncpg":
        pool = await asyncpg.create_pool(url, min_size=conns, max_size=conns)

        async def one(a: list[Any]) -> None:
            async with pool.acquire() as c:
                if mode == "txn":
                    async with c.transaction():
                        await c.execute(
                            f"UPDATE {SCHEMA}.inst SET updated_at = $1, events = events + 2 "
                            "WHERE id = $2 AND owner = $3",
                            a[2][0],
                            a[0][0],
                            a[1][0],
                        )
                        await c.executemany(
                            f"INSERT INTO {SCHEMA}.steps VALUES ($1,$2,$3,$4) ON CONFLICT "
                            "(saga_id, name) DO UPDATE SET status = excluded.status",
                            list(zip(a[4], a[5], a[6], a[7], strict=True)),
                        )
                        await c.executemany(
                            f"INSERT INTO {SCHEMA}.events VALUES ($1, $2, $3, $4)",
                            [(a[8][j], int(a[2][0]) * 2 + j, 1.0, "step") for j in range(2)],
                        )
                else:
                    await c.fetch(CTE, *a)

        close: Callable[[], Awaitable[None]] = pool.close
    else:
        # psycopg_pool is not a dependency: a queue of connections is all this needs.
        idle: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for _ in range(conns):
            idle.put_nowait(
                await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0)
            )
        sql = CTE
        for n in range(12, 0, -1):
            sql = sql.replace(f"${n}", "%s")

        async def one(a: list[Any]) -> None:
            c = await idle.get()
            try:
                if mode == "txn":
                    async with c.transaction():
                        await c.execute(
                            f"UPDATE {SCHEMA}.inst SET updated_at = %s, events = events + 2 "
                            "WHERE id = %s AND owner = %s",
                            (a[2][0], a[0][0], a[1][0]),
                        )
                        async with c.cursor() as cur:
                            await cur.executemany(
                                f"INSERT INTO {SCHEMA}.steps VALUES (%s,%s,%s,%s) ON CONFLICT "
                                "(saga_id, name) DO UPDATE SET status = excluded.status",
                                list(zip(a[4], a[5], a[6], a[7], strict=True)),
                            )
                            await cur.executemany(
                                f"INSERT INTO {SCHEMA}.events VALUES (%s, %s, %s, %s)",
                                [(a[8][j], int(a[2][0]) * 2 + j, 1.0, "step") for j in range(2)],
                            )
                else:
                    await (await c.execute(sql, a)).fetchall()
            finally:
                idle.put_nowait(c)

        async def close() -> None:
            while not idle.empty():
                await idle.get_nowait().close()

    batcher = Batcher(one, inflight=2) if mode == "batch" else None
    flusher = asyncio.create_task(batcher.loop()) if batcher else None

    async def saga(saga_id: str) -> None:
        for k in range(1, transitions + 1):
            if batcher:
                await batcher.submit((saga_id, k))
            else:
                await one(args_for([(saga_id, k)]))

    began = time.perf_counter()
    await asyncio.gather(*(saga(i) for i in ids))
    elapsed = time.perf_counter() - began
    if flusher:
        flusher.cancel()
    await close()
    return sagas * transitions / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--sagas", type=int, default=32)
    parser.add_argument("--transitions", type=int, default=150)
    args = parser.parse_args()
    for mode in ("txn", "cte", "batch"):
        for name in ("asyncpg", "psycopg"):
            rate = await measure(name, args.url, mode, args.sagas, args.transitions)
            print(f"{mode:<6} {name:<8} {rate:>8.0f} transitions/s", flush=True)
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as c:
        await c.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


if __name__ == "__main__":
    asyncio.run(main())
