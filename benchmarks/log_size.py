"""Saga log size on SQLite: bytes per finished saga, and where they go.

Runs N of ``engine_throughput.py``'s three-step checkout sagas (every 10th compensates; its
ledger on dicts, so the file holds the saga log only) on a fresh SQLite file, checkpoints the
WAL, then prints the file's size per saga (``page_count * page_size``), the rows per saga of
each table, and each table's and index's share of the pages (``dbstat``, when this SQLite has
it). The last line is one JSON object:

    python benchmarks/log_size.py --n 20000

``--store postgresql://...`` measures a PostgreSQL log instead, in a schema of its own
(``?schema=``, default ``sagaway_log_size``, dropped first): bytes per saga of each table with
its indexes and TOAST (``pg_total_relation_size``, after a ``VACUUM``), and rows per saga.

``--packed`` also copies every saga's events still in ``sagaway_events`` into one row per saga
(one compact JSON array: times as integer ms since the saga's start, event types and step
names as small integers, in a ``WITHOUT ROWID`` table keyed by the saga id) in a scratch
database and prints the bytes per saga that layout would take. It was how compaction was sized
before it was built; since schema version 7 a finished saga's events are packed into its row
by the commit that finishes it (docs/stores.md), so on a fresh log there is nothing left to copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine_throughput import MemoryLedger, Order, build_saga
from report import print_report
from sagaway import Engine

SAGA_TABLES = ("sagaway_instances", "sagaway_steps", "sagaway_events", "sagaway_outbox")


async def fill(url: str, n: int, concurrency: int) -> float:
    ledger = MemoryLedger()
    await ledger.setup()
    saga = build_saga(ledger)
    async with Engine(url, sagas=[saga]) as engine:
        ids = iter(range(n))
        began = time.perf_counter()

        async def client() -> None:
            for order_id in ids:
                saga_id = await engine.start(saga, Order(order_id=order_id, amount_cents=5000))
                await engine.wait(saga_id)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - began


def file_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
    """(bytes in use, bytes on the free list) of the main database file."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size, free * page_size


def per_object(conn: sqlite3.Connection) -> dict[str, int] | None:
    """Bytes of pages per table and index (None without the dbstat virtual table)."""
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.OperationalError:
        return None
    return {name: int(size) for name, size in rows}


def packed_bytes(conn: sqlite3.Connection, scratch: Path) -> int:
    """Bytes the events would take as one compact row per saga (see the module docstring)."""
    kinds: dict[str, int] = {}
    names: dict[str, int] = {}
    out = sqlite3.connect(scratch)
    out.execute("CREATE TABLE h (saga_id TEXT PRIMARY KEY, start INTEGER, ev TEXT) WITHOUT ROWID")
    current: str | None = None
    start, packed = 0, []  # type: ignore[var-annotated]
    rows: list[tuple[str, int, str]] = []

    def flush() -> None:
        if current is not None:
            rows.append((current, start, json.dumps(packed, separators=(",", ":"))))

    for saga_id, at, kind, step, phase, attempt, detail in conn.execute(
        "SELECT saga_id, at, type, step, phase, attempt, detail FROM sagaway_events "
        "ORDER BY saga_id, id"
    ):
        if saga_id != current:
            flush()
            current, start, packed = saga_id, round(at * 1000), []
        entry: list[Any] = [round(at * 1000) - start, kinds.setdefault(kind, len(kinds))]
        if step is not None or detail is not None:
            entry.append(None if step is None else names.setdefault(step, len(names)))
            entry.append(None if phase is None else phase[0])
            entry.append(attempt)
            if detail is not None:
                entry.append(detail)
        packed.append(entry)
    flush()
    out.executemany("INSERT INTO h VALUES (?,?,?)", rows)
    out.commit()
    used = file_bytes(out)[0]
    out.close()
    return used


async def pg_sizes(url: str, n: int, concurrency: int) -> dict[str, Any]:
    """Fill a fresh schema through the engine and measure it (see the module docstring)."""
    import asyncpg  # type: ignore[import-untyped]

    from sagaway.store.postgres import parse_url

    settings = parse_url(url)
    conn = await asyncpg.connect(settings.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
        seconds = await fill(url, n, concurrency)
        result: dict[str, Any] = {"store": "postgresql", "fill_seconds": round(seconds, 1)}
        sagas = await conn.fetchval(f'SELECT count(*) FROM "{settings.schema}".sagaway_instances')
        total = 0
        for table in SAGA_TABLES:
            name = f'"{settings.schema}".{table}'
            await conn.execute(f"VACUUM {name}")
            size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
            rows = await conn.fetchval(f"SELECT count(*) FROM {name}")
            result[f"{table}_bytes_per_saga"] = round(size / sagas, 1)
            result[f"{table}_rows_per_saga"] = round(rows / sagas, 2)
            total += size
        result["sagas"] = sagas
        result["bytes_per_saga"] = round(total / sagas, 1)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.schema}" CASCADE')
        return result
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--db", help="keep the log here (default: a temporary file)")
    parser.add_argument("--packed", action="store_true", help="measure packed histories too")
    parser.add_argument("--store", help="a postgresql:// URL: measure that store instead")
    args = parser.parse_args()
    if args.store:
        url = args.store if "schema=" in args.store else f"{args.store}?schema=sagaway_log_size"
        print_report(asyncio.run(pg_sizes(url, args.n, args.concurrency)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "log.db"
        if path.exists():
            path.unlink()
        # durable=false: fsyncs change nothing in the file's contents, only the run's time.
        seconds = asyncio.run(fill(f"sqlite:///{path}?durable=false", args.n, args.concurrency))
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        used, free = file_bytes(conn)
        objects = per_object(conn)
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SAGA_TABLES}
        sagas = rows["sagaway_instances"]
        outcomes = dict(
            conn.execute("SELECT status, count(*) FROM sagaway_instances GROUP BY status")
        )
        result: dict[str, Any] = {
            "sagas": sagas,
            "fill_seconds": round(seconds, 1),
            "bytes_per_saga": round(used / sagas, 1),
            "file_bytes": used + free,
            "outcomes": outcomes,
        }
        for table in SAGA_TABLES:
            result[f"{table}_rows_per_saga"] = round(rows[table] / sagas, 2)
        if objects is not None:
            events = sum(v for k, v in objects.items() if k.startswith("sagaway_events"))
            result["events_and_index_share"] = round(events / used, 3)
            for name, size in sorted(objects.items(), key=lambda kv: -kv[1]):
                if size >= used / 200:
                    result[f"{name}_bytes_per_saga"] = round(size / sagas, 1)
        if args.packed:
            packed = packed_bytes(conn, Path(tmp) / "packed.db")
            events = sum(v for k, v in (objects or {}).items() if k.startswith("sagaway_events"))
            result["packed_history_bytes_per_saga"] = round(packed / sagas, 1)
            if objects is not None:
                result["bytes_per_saga_if_packed"] = round((used - events + packed) / sagas, 1)
        conn.close()
        print_report(result)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
