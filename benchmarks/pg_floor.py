"""The floor under ``engine_throughput.py --store postgresql://...``: the same durable writes per
saga, in plain asyncpg, with group commit, and no engine.

A 3-step saga writes what the PostgreSQL store writes for it, into the store's own tables (the
schema is created by the store, so rows and indexes are the same):

* start: the saga row (RUNNING, owner, lease) with step 1's RUNNING row and two events;
* after each step: its effect row (the ledger of ``pg_ledger.py``, its own group commit, as in
  the engine benchmark), then one transition: the saga row updated (fenced by the owner, event
  counter bumped), the step's row upserted SUCCEEDED, the next one's inserted RUNNING, two
  events; the last one sets SUCCEEDED;
* every 10th saga fails at step 3 and undoes steps 2 and 1 (refund, release), three more
  transitions, as the engine's compensation does.

Log writes from all sagas are queued and sent as one statement per batch (a data-modifying CTE
over arrays), up to two batches in flight on their own connections, as the store does; a saga
goes on only once its batch has committed. What the floor leaves out is everything the engine
and the store add on top: leases renewed, per-operation outcome reporting, cancel fences,
NOTIFY, decoding records, hooks::

    python benchmarks/pg_floor.py --url postgresql://postgres@127.0.0.1:5432/postgres --n 10000

Prints a table, then one JSON line. ``engine_throughput.py --floor`` runs it in the same
invocation as the engine and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import asyncpg

from pg_ledger import PostgresLedger, drop_schema
from report import kernel_cpu_s, latency_ms, print_report

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres?schema=bench_floor"
STEPS = ("reserve_inventory", "process_payment", "ship_order")
LEDGER = {"reserve_inventory": "reservations", "process_payment": "payments"}
UNDO = {"reserve_inventory": "releases", "process_payment": "refunds"}

# One transition: (saga id, new status or None, [step rows], [events]); a new saga also has
# its input. Step row: (name, phase, status, attempts, output json, error, started, finished).
# Event: (seq, at, type, step, phase, attempt, detail).
Step = tuple[str, str, str, int, str | None, str | None, float, float | None]
Ev = tuple[int, float, str, str | None, str | None, int | None, str | None]


def batch_sql(s: str) -> str:
    inst, steps, events = f"{s}.sagaway_instances", f"{s}.sagaway_steps", f"{s}.sagaway_events"
    return f"""
WITH ins AS (
  INSERT INTO {inst} (id, name, version, status, input, idempotency_key, owner,
    lease_expires_at, created_at, updated_at, events)
  SELECT id, 'bench_checkout', 1, 'RUNNING', input::jsonb, NULL, $3, $4, at, at, n
  FROM unnest($1::text[], $2::text[], $5::float8[], $6::int[]) AS c(id, input, at, n)
), upd AS (
  UPDATE {inst} i SET status = coalesce(u.status, i.status), updated_at = u.at,
    events = i.events + u.n
  FROM unnest($7::text[], $8::text[], $9::float8[], $10::int[]) AS u(id, status, at, n)
  WHERE i.id = u.id AND i.owner = $3
  RETURNING i.id
), st AS (
  INSERT INTO {steps} (saga_id, name, phase, status, attempts, output, error, uncertain,
    started_at, finished_at)
  SELECT saga_id, name, phase, status, attempts, output::jsonb, error, false, started, finished
  FROM unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::int[], $16::text[],
    $17::text[], $18::float8[], $19::float8[])
    AS r(saga_id, name, phase, status, attempts, output, error, started, finished)
  ON CONFLICT (saga_id, name, phase) DO UPDATE SET status = excluded.status,
    attempts = excluded.attempts, output = excluded.output, error = excluded.error,
    finished_at = excluded.finished_at
), ev AS (
  INSERT INTO {events} (saga_id, seq, at, type, step, phase, attempt, detail)
  SELECT * FROM unnest($20::text[], $21::int[], $22::float8[], $23::text[], $24::text[],
    $25::text[], $26::int[], $27::text[])
)
SELECT count(*) FROM upd
"""


class GroupCommit:
    """Transitions queued by any saga, sent as one statement per batch, two batches in flight."""

    def __init__(self, pool: Any, sql: str, owner: str, in_flight: int = 2) -> None:
        self.pool, self.sql, self.owner = pool, sql, owner
        self.queued: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.slots = asyncio.Semaphore(in_flight)
        self.batches = 0

    async def write(self, *transition: Any) -> None:
        future = asyncio.get_running_loop().create_future()
        self.queued.append((transition, future))
        self.wakeup.set()
        await future

    async def run(self) -> None:
        while True:
            if not self.queued:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            await self.slots.acquire()
            batch, self.queued = self.queued, []
            asyncio.create_task(self._send(batch))  # noqa: RUF006 - awaited through futures

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[None]]]) -> None:
        cols: list[list[Any]] = [[] for _ in range(27)]
        now = time.time()
        for (saga_id, status, steps, events, new_input), _ in batch:
            if new_input is not None:
                cols[0].append(saga_id)
                cols[1].append(new_input)
                cols[4].append(now)
                cols[5].append(len(events))
            else:
                cols[6].append(saga_id)
                cols[7].append(status)
                cols[8].append(now)
                cols[9].append(len(events))
            for row in steps:
                cols[10].append(saga_id)
                for k, value in enumerate(row):
                    cols[11 + k].append(value)
            for event in events:
                cols[19].append(saga_id)
                for k, value in enumerate(event):
                    cols[20 + k].append(value)
        args = [cols[0], cols[1], self.owner, now + 30.0, *cols[4:]]
        try:
            await self.pool.fetchval(self.sql, *args)
        except Exception as exc:
            for _, future in batch:
                future.set_exception(exc)
        else:
            self.batches += 1
            for _, future in batch:
                future.set_result(None)
        finally:
            self.slots.release()


async def saga(log: GroupCommit, ledger: PostgresLedger, i: int) -> None:
    saga_id = f"floor-{i:08d}"
    now = time.time
    seq = 0

    def events(*kinds: tuple[str, str | None, str | None, int | None]) -> list[Ev]:
        nonlocal seq
        at = now()
        out = [(seq + k, at, t, step, ph, att, None) for k, (t, step, ph, att) in enumerate(kinds)]
        seq += len(kinds)
        return out

    started = now()
    first = (STEPS[0], "forward", "RUNNING", 1, None, None, started, None)
    await log.write(
        saga_id,
        None,
        [first],
        events(("saga_started", None, None, None), ("step_started", STEPS[0], "forward", 1)),
        json.dumps({"order_id": i, "amount_cents": 5000}),
    )
    for index, step in enumerate(STEPS):
        await asyncio.sleep(0)  # the step's action
        if index == 2 and i % 10 == 9:
            t = now()
            failed = (step, "forward", "FAILED", 1, None, "Invalid shipping address", t, t)
            undo = [s for s in STEPS[:2]][::-1]
            await log.write(
                saga_id,
                "COMPENSATING",
                [failed, (undo[0], "compensation", "COMPENSATING", 1, None, None, t, None)],
                events(
                    ("step_failed", step, "forward", 1),
                    ("compensation_started", undo[0], "compensation", 1),
                ),
                None,
            )
            for k, name in enumerate(undo):
                await ledger.write(
                    SimpleNamespace(idempotency_key=f"{saga_id}:{name}:undo"),
                    UNDO[name],
                    i,
                    5000,
                )
                t = now()
                done = (name, "compensation", "COMPENSATED", 1, None, None, t, t)
                if k + 1 < len(undo):
                    nxt = undo[k + 1]
                    await log.write(
                        saga_id,
                        None,
                        [done, (nxt, "compensation", "COMPENSATING", 1, None, None, t, None)],
                        events(
                            ("step_compensated", name, "compensation", 1),
                            ("compensation_started", nxt, "compensation", 1),
                        ),
                        None,
                    )
                else:
                    await log.write(
                        saga_id,
                        "COMPENSATED",
                        [done],
                        events(
                            ("step_compensated", name, "compensation", 1),
                            ("saga_compensated", None, None, None),
                        ),
                        None,
                    )
            return
        table = LEDGER.get(step, "shipments")
        await ledger.write(SimpleNamespace(idempotency_key=f"{saga_id}:{step}"), table, i, 5000)
        t = now()
        done = (step, "forward", "SUCCEEDED", 1, json.dumps(5000), None, started, t)
        if index + 1 < len(STEPS):
            nxt = STEPS[index + 1]
            await log.write(
                saga_id,
                None,
                [done, (nxt, "forward", "RUNNING", 1, None, None, t, None)],
                events(("step_succeeded", step, "forward", 1), ("step_started", nxt, "forward", 1)),
                None,
            )
        else:
            await log.write(
                saga_id,
                "SUCCEEDED",
                [done],
                events(
                    ("step_succeeded", step, "forward", 1), ("saga_succeeded", None, None, None)
                ),
                None,
            )
        started = t


async def run(url: str, n: int, concurrency: int) -> dict[str, Any]:
    from sagaway.store import open_store

    await drop_schema(url)
    store = open_store(url)  # creates the store's schema: the floor writes the same tables
    async with store:
        ledger = PostgresLedger(store)
        await ledger.setup()
        dsn, schema = store.settings.dsn, store.schema  # type: ignore[attr-defined]
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    log = GroupCommit(pool, batch_sql(f'"{schema}"'), owner="floor")
    committer = asyncio.create_task(log.run())
    latencies: list[float] = []
    orders = iter(range(n))

    async def client() -> None:
        for i in orders:
            began = time.perf_counter()
            await saga(log, ledger, i)
            latencies.append(time.perf_counter() - began)

    try:
        began, cpu, kernel = time.perf_counter(), time.process_time(), kernel_cpu_s()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
        kernel = kernel_cpu_s() - kernel
        statuses = dict(
            await pool.fetch(
                f'SELECT status, count(*) FROM "{schema}".sagaway_instances GROUP BY 1'
            )
        )
    finally:
        committer.cancel()
        await ledger.close()
        await pool.close()
    assert statuses == {"SUCCEEDED": n - n // 10, "COMPENSATED": n // 10}, statuses
    transitions = n * 4 + n // 10 * 2
    return {
        "benchmark": "pg_floor",
        "n": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sagas_per_s": round(n / elapsed, 1),
        **latency_ms(latencies),
        "cpu_us_per_saga": round(cpu / n * 1e6, 1),
        "sys_us_per_saga": round(kernel / n * 1e6, 1),
        "transitions_per_batch": round(transitions / max(log.batches, 1), 1),
    }


def measure(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """One run of the floor on ``url`` (its ``?schema=`` is dropped and recreated)."""
    return asyncio.run(run(url, n, concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="its ?schema= is dropped first")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print_report(measure(args.url, args.n, args.concurrency))


if __name__ == "__main__":
    main()
