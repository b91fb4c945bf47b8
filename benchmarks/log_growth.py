"""Engine throughput as the SQLite saga log grows to a million sagas, with and without retention.

Slice 0 runs ``--measure`` of ``engine_throughput.py``'s three-step sagas (32 in flight,
durable, the ledger rows in the same file) on an empty log. Each following slice first grows
the log by ``--grow`` finished sagas, cloned in bulk from slice 0's own rows (same ids' shape,
steps, events, sizes: what an engine that ran them would have left; running a million sagas
through the engine would take hours on a shared machine and measure nothing more), then runs
``--measure`` sagas again. Throughput per slice against slice 0, in the same run, shows whether
a bigger log slows the engine (deeper B-trees, a file beyond the page cache):

    python benchmarks/log_growth.py --slices 10 --grow 100000          # to 1M sagas
    python benchmarks/log_growth.py --slices 10 --grow 100000 --retention

``--retention``: the engine runs with ``retention_days=1`` and the grown sagas are 2 days old,
so its maintenance loop prunes them (200 per batch, at most 0.05 s per pass) *while* the slice
runs: the table shows what pruning costs the running sagas and how far the log is kept down.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine_throughput import Order, SQLiteLedger, build_saga
from report import print_report
from sagaway import Engine

DAY = 86_400.0
INSTANCE_COLS = (
    "id, name, version, status, input, idempotency_key, owner, lease_expires_at, deadline_at, "
    "cancel_requested, error, created_at, updated_at, waiting_for, parked_until, pinned, "
    # Schema v7: a finished saga's steps and history (times relative to created_at, so a
    # copy shifted in time keeps a valid one).
    "packed"
)
STEP_COLS = (
    "saga_id, name, phase, status, attempts, output, error, uncertain, started_at, finished_at"
)
EVENT_COLS = "saga_id, at, type, step, phase, attempt, detail"


async def run_slice(url: str, first: int, n: int, concurrency: int, retention: bool) -> float:
    """Run ``n`` sagas (order ids from ``first``); sagas per second."""
    async with Engine(url, retention_days=1.0 if retention else None) as engine:
        ledger = SQLiteLedger(engine.store)
        await ledger.setup()
        saga = build_saga(ledger)
        engine.register(saga)
        ids = iter(range(first, first + n))

        async def client() -> None:
            for order_id in ids:
                saga_id = await engine.start(saga, Order(order_id=order_id, amount_cents=5000))
                await engine.wait(saga_id)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return n / (time.perf_counter() - began)


class Cloner:
    """Bulk copies of finished sagas, from the rows slice 0 left."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.sagas = conn.execute(
            f"SELECT {INSTANCE_COLS} FROM sagaway_instances "
            "WHERE status IN ('SUCCEEDED', 'COMPENSATED')"
        ).fetchall()
        self.steps: dict[str, list[tuple[Any, ...]]] = {}
        for row in conn.execute(f"SELECT {STEP_COLS} FROM sagaway_steps"):
            self.steps.setdefault(row[0], []).append(row)
        self.events: dict[str, list[tuple[Any, ...]]] = {}
        for row in conn.execute(f"SELECT {EVENT_COLS} FROM sagaway_events ORDER BY id"):
            self.events.setdefault(row[0], []).append(row)

    def grow(self, conn: sqlite3.Connection, count: int, age: float) -> None:
        chunk = 10_000
        for start in range(0, count, chunk):
            sagas, steps, events = [], [], []
            for k in range(start, min(start + chunk, count)):
                row = self.sagas[k % len(self.sagas)]
                shift = time.time() - age - row[12]
                new_id = f"{int((row[11] + shift) * 1000):012x}{os.urandom(10).hex()}"
                sagas.append((new_id, *row[1:11], row[11] + shift, row[12] + shift, *row[13:]))
                for s in self.steps.get(row[0], ()):
                    steps.append((new_id, *s[1:8], _add(s[8], shift), _add(s[9], shift)))
                for e in self.events.get(row[0], ()):
                    events.append((new_id, e[1] + shift, *e[2:]))
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO sagaway_instances ({INSTANCE_COLS}) VALUES ({','.join('?' * 17)})",
                sagas,
            )
            conn.executemany(
                f"INSERT INTO sagaway_steps ({STEP_COLS}) VALUES ({','.join('?' * 10)})", steps
            )
            conn.executemany(
                f"INSERT INTO sagaway_events ({EVENT_COLS}) VALUES ({','.join('?' * 7)})", events
            )
            conn.execute("COMMIT")


def _add(at: float | None, shift: float) -> float | None:
    return None if at is None else at + shift


def log_state(conn: sqlite3.Connection) -> tuple[int, int]:
    sagas = conn.execute("SELECT count(*) FROM sagaway_instances").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(sagas), int(pages * size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--grow", type=int, default=100_000, help="sagas added per slice")
    parser.add_argument("--measure", type=int, default=5_000, help="sagas run per slice")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--retention", action="store_true")
    parser.add_argument("--db", help="the log file (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "growth.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
        rates: list[float] = []
        result: dict[str, Any] = {"retention": args.retention, "measure": args.measure}
        cloner: Cloner | None = None
        grown = 0
        for k in range(args.slices + 1):
            if k > 0:
                conn = sqlite3.connect(path, isolation_level=None)
                if cloner is None:
                    cloner = Cloner(conn)
                began = time.perf_counter()
                cloner.grow(conn, args.grow, age=2 * DAY if args.retention else 60.0)
                grown += args.grow
                conn.close()
                grow_s = time.perf_counter() - began
            else:
                grow_s = 0.0
            conn = sqlite3.connect(path)
            before, _ = log_state(conn) if k else (0, 0)
            conn.close()
            rate = asyncio.run(
                run_slice(url, k * args.measure, args.measure, args.concurrency, args.retention)
            )
            rates.append(rate)
            conn = sqlite3.connect(path)
            after, size = log_state(conn)
            conn.close()
            print(
                f"slice {k:2}: log {before:>9,} sagas before, {after:>9,} after "
                f"({size / 1e6:,.0f} MB); {rate:,.0f} sagas/s ({rate / rates[0]:.2f} of slice 0)"
                f"; grown in {grow_s:.1f} s",
                flush=True,
            )
            result[f"slice{k}_sagas_per_s"] = round(rate, 1)
            result[f"slice{k}_log_sagas"] = after
        result["sagas_added"] = grown + (args.slices + 1) * args.measure
        result["last_over_first"] = round(rates[-1] / rates[0], 3)
        result["min_over_first"] = round(min(rates) / rates[0], 3)
        result["final_log_mb"] = round(size / 1e6, 1)
        print_report(result)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
