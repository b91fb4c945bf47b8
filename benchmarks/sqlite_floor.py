"""The floor under ``engine_throughput.py --store sqlite://``: the same workload in plain Python.

No engine, no saga log beyond one progress row per saga: a 3-step saga is four durable writes
(insert the saga row; after each step, update it and insert the step's effect row in the same
transaction), every 10th fails at step 3 and undoes steps 2 and 1 (two more writes). This is the
"plain Python" reference of issue 2, measured on the machine at hand, so that the engine's figure
can be read as a fraction of what Python and SQLite themselves allow here (machines, and a
shared machine from hour to hour, differ by 2x):

    python benchmarks/sqlite_floor.py --commit group      # one fsync per batch of writes
    python benchmarks/sqlite_floor.py --commit each       # one fsync per write
    python benchmarks/sqlite_floor.py --commit none       # no SQLite: the same sagas on dicts
    python benchmarks/sqlite_floor.py --commit none --task-per-saga   # each in a Task, awaited

    python benchmarks/sqlite_floor.py --ledger-tables     # effects in engine_throughput's tables

``--ledger-tables`` (SQLite only) writes the effects where ``engine_throughput.py``'s steps
write theirs, five tables (reservations, payments, shipments forward; releases and refunds
inserted to undo) instead of the one ``effect`` table, to price that difference (README
"Session 19, lead"); it is not the floor.

``--task-per-saga`` (dicts only) runs each saga as the engine must, in an ``asyncio.Task`` of its
own whose end a future answers to the client awaiting it (a durable saga outlives its caller),
to price what that costs the floor (README "Session 18, lead"); it is not the floor.

``group`` queues writes from all sagas and commits whatever is queued in one transaction, on
the event loop's thread, as the SQLite store does; ``each`` commits every write on its own.
Both are durable (WAL, synchronous=FULL). ``none`` keeps the sagas and effects in dicts: the
floor under ``engine_throughput.py --store memory://``. Prints a table, then one JSON line.
``engine_throughput.py --floor`` runs the matching floor in the same invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections import Counter
from typing import Any

from report import kernel_cpu_s, latency_ms, print_report

Write = tuple[str, tuple[Any, ...]]

SCHEMA = (
    "CREATE TABLE saga (id INTEGER PRIMARY KEY, status TEXT NOT NULL, step INTEGER NOT NULL, "
    "input TEXT NOT NULL)",
    "CREATE TABLE effect (key TEXT PRIMARY KEY, saga INTEGER NOT NULL, amount INTEGER NOT NULL)",
)


class GroupCommit:
    """Writes queued by any saga, committed together: one transaction, one fsync per batch."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.queued: list[tuple[list[Write], asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.batches = 0

    async def write(self, *statements: Write) -> None:
        future = asyncio.get_running_loop().create_future()
        self.queued.append((list(statements), future))
        self.wakeup.set()
        await future

    async def run(self) -> None:
        while True:
            if not self.queued:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            await asyncio.sleep(0)  # let the callers just woken queue their next writes
            batch, self.queued = self.queued, []
            self.conn.execute("BEGIN IMMEDIATE")
            for statements, _ in batch:
                for sql, params in statements:
                    self.conn.execute(sql, params)
            self.conn.execute("COMMIT")
            self.batches += 1
            for _, future in batch:
                future.set_result(None)


class CommitEach:
    """Every write its own transaction (and fsync), one at a time, right away."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.batches = 0

    async def write(self, *statements: Write) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for sql, params in statements:
            self.conn.execute(sql, params)
        self.conn.execute("COMMIT")
        self.batches += 1

    async def run(self) -> None:
        await asyncio.Event().wait()


LEDGER_TABLES = ("reservations", "payments", "shipments", "releases", "refunds")
LEDGER_SCHEMA = (
    SCHEMA[0],
    *(
        f"CREATE TABLE bench_{table} (key TEXT PRIMARY KEY, order_id INTEGER, amount INTEGER)"
        for table in LEDGER_TABLES
    ),
)
FORWARD = {1: "bench_reservations", 2: "bench_payments", 3: "bench_shipments"}
UNDO = {1: "bench_releases", 2: "bench_refunds"}


def effect(step: int, i: int, ledger: bool) -> Write:
    if ledger:
        return (f"INSERT OR IGNORE INTO {FORWARD[step]} VALUES (?, ?, 500)", (f"{i}:{step}", i))
    return ("INSERT INTO effect VALUES (?, ?, 500)", (f"{i}:{step}", i))


def undo(step: int, i: int, ledger: bool) -> Write:
    if ledger:
        return (f"INSERT OR IGNORE INTO {UNDO[step]} VALUES (?, ?, 500)", (f"{i}:{step}:u", i))
    return ("DELETE FROM effect WHERE key = ?", (f"{i}:{step}",))


async def saga(log: GroupCommit | CommitEach, i: int, ledger: bool = False) -> None:
    await log.write(
        ("INSERT INTO saga VALUES (?, 'running', 0, ?)", (i, json.dumps({"order": i, "c": 500})))
    )
    for step in (1, 2, 3):
        await asyncio.sleep(0)  # the step's action
        if step == 3 and i % 10 == 9:
            for undone in (2, 1):
                await log.write(
                    undo(undone, i, ledger),
                    ("UPDATE saga SET status = 'compensating', step = ? WHERE id = ?", (undone, i)),
                )
            await log.write(("UPDATE saga SET status = 'compensated' WHERE id = ?", (i,)))
            return
        status = "succeeded" if step == 3 else "running"
        await log.write(
            effect(step, i, ledger),
            ("UPDATE saga SET status = ?, step = ? WHERE id = ?", (status, step, i)),
        )


async def dict_saga(sagas: dict[int, list[Any]], effects: dict[str, int], i: int) -> None:
    """``saga`` on dicts: the same steps and undo, nothing durable."""
    sagas[i] = row = ["running", 0, json.dumps({"order": i, "c": 500})]
    for step in (1, 2, 3):
        await asyncio.sleep(0)  # the step's action
        if step == 3 and i % 10 == 9:
            for undo in (2, 1):
                del effects[f"{i}:{undo}"]
                row[0], row[1] = "compensating", undo
            row[0] = "compensated"
            return
        effects[f"{i}:{step}"] = 500
        row[0], row[1] = ("succeeded" if step == 3 else "running"), step


async def run_dicts(n: int, concurrency: int, task_per_saga: bool = False) -> dict[str, Any]:
    sagas: dict[int, list[Any]] = {}
    effects: dict[str, int] = {}
    latencies: list[float] = []
    orders = iter(range(n))
    loop = asyncio.get_running_loop()

    async def in_task(i: int, done: asyncio.Future[None]) -> None:
        await dict_saga(sagas, effects, i)
        done.set_result(None)

    async def client() -> None:
        for i in orders:
            began = time.perf_counter()
            if task_per_saga:
                done = loop.create_future()
                asyncio.Task(in_task(i, done), loop=loop, name=str(i))
                await done
            else:
                await dict_saga(sagas, effects, i)
            latencies.append(time.perf_counter() - began)

    began, cpu, kernel = time.perf_counter(), time.process_time(), kernel_cpu_s()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    kernel = kernel_cpu_s() - kernel
    statuses = Counter(row[0] for row in sagas.values())
    assert statuses == {"succeeded": n - n // 10, "compensated": n // 10}, statuses
    return {
        "benchmark": "dict_floor",
        "commit": "none",
        "task_per_saga": task_per_saga,
        "n": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sagas_per_s": round(n / elapsed, 1),
        **latency_ms(latencies),
        "cpu_us_per_saga": round(cpu / n * 1e6, 1),
        "sys_us_per_saga": round(kernel / n * 1e6, 1),
    }


def measure(
    kind: str,
    n: int,
    concurrency: int,
    task_per_saga: bool = False,
    ledger_tables: bool = False,
) -> dict[str, Any]:
    """One run of the floor: ``kind`` is ``group``, ``each`` (SQLite in a temporary file) or
    ``none`` (dicts; ``task_per_saga``: each saga in a Task of its own, see the docstring;
    ``ledger_tables``: SQLite's effects in the engine benchmark's tables)."""
    if kind == "none":
        return asyncio.run(run_dicts(n, concurrency, task_per_saga))
    with tempfile.TemporaryDirectory(dir=".") as directory:
        path = os.path.join(directory, "floor.db")
        return asyncio.run(run(path, kind, n, concurrency, ledger_tables))


async def run(
    path: str, commit: str, n: int, concurrency: int, ledger: bool = False
) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in LEDGER_SCHEMA if ledger else SCHEMA:
        conn.execute(statement)
    log: GroupCommit | CommitEach = GroupCommit(conn) if commit == "group" else CommitEach(conn)
    committer = asyncio.create_task(log.run())
    latencies: list[float] = []
    orders = iter(range(n))

    async def client() -> None:
        for i in orders:
            began = time.perf_counter()
            await saga(log, i, ledger)
            latencies.append(time.perf_counter() - began)

    began, cpu, kernel = time.perf_counter(), time.process_time(), kernel_cpu_s()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    kernel = kernel_cpu_s() - kernel
    committer.cancel()
    statuses = dict(conn.execute("SELECT status, count(*) FROM saga GROUP BY status").fetchall())
    conn.close()
    assert statuses == {"succeeded": n - n // 10, "compensated": n // 10}, statuses
    return {
        "benchmark": "sqlite_floor",
        "commit": commit,
        "n": n,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "sagas_per_s": round(n / elapsed, 1),
        **latency_ms(latencies),
        "cpu_us_per_saga": round(cpu / n * 1e6, 1),
        "sys_us_per_saga": round(kernel / n * 1e6, 1),
        "writes_per_commit": round((n * 4 + n // 10 * 2) / log.batches, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", choices=["group", "each", "none"], default="group")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--task-per-saga", action="store_true", help="with --commit none only")
    parser.add_argument("--ledger-tables", action="store_true", help="with --commit group/each")
    args = parser.parse_args()
    if args.task_per_saga and args.commit != "none":
        parser.error("--task-per-saga goes with --commit none")
    if args.ledger_tables and args.commit == "none":
        parser.error("--ledger-tables goes with --commit group or each")
    result = measure(args.commit, args.n, args.concurrency, args.task_per_saga, args.ledger_tables)
    if args.ledger_tables:
        result["ledger_tables"] = True
    print_report(result)


if __name__ == "__main__":
    main()
