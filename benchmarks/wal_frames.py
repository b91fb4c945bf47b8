"""What the SQLite store's group commits write to the WAL: frames a transaction, by B-tree.

Runs N of ``engine_throughput.py``'s sagas (its SQLite ledger in the same file) with the
store's automatic checkpoint off, so the WAL keeps every transaction, then reads the WAL's
frames (each one page, written whole and checksummed whole), groups them by commit and names
each page's B-tree from ``dbstat``:

    python benchmarks/wal_frames.py --n 5000
    python benchmarks/wal_frames.py --n 5000 --page-size 4096    # a new file's page size
    python benchmarks/wal_frames.py --checkout --n 2000          # the checkout's orders

``--checkout`` runs ``checkout_cost.py``'s orders instead (``checkout serve``'s app called
in-process, the shop's tables and the saga log in one file, ``--concurrency`` in flight, no
warm-up); an item is then an order.

``--parse FILE`` only reads an existing database FILE and its ``FILE-wal`` (copy both while a
connection still holds the file open: the last connection to close checkpoints the WAL away).

Each page a transaction dirties is one frame (24 bytes of header and the page), written by two
``pwrite`` calls and written back by the fsync; a page dirtied by every batch (the right edge of
an index that appends) costs one frame a batch however many entries the batch adds to it, a
page hit at random (an index on a random key) one frame per entry. The first tenth of the
transactions (the file growing from empty) are left out of the per-B-tree table. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

_HEADER, _FRAME_HEADER = 32, 24


def parse(db: str, items: int) -> dict[str, Any]:
    """Frames a transaction of ``db``'s WAL, by B-tree and page type, per ``items`` run."""
    with open(db + "-wal", "rb") as f:
        wal = f.read()
    page_size = struct.unpack(">I", wal[8:12])[0]
    with tempfile.TemporaryDirectory() as scratch:  # a copy: opening it replays the WAL
        copy = os.path.join(scratch, "copy.db")
        shutil.copy(db, copy)
        shutil.copy(db + "-wal", copy + "-wal")
        conn = sqlite3.connect(copy)
        pages = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT pageno, name, pagetype FROM dbstat")
        }
        rows = _saga_rows(conn)
        conn.close()
    transactions: list[list[int]] = []
    current: list[int] = []
    offset = _HEADER
    while offset + _FRAME_HEADER + page_size <= len(wal):
        page, commit = struct.unpack(">II", wal[offset : offset + 8])
        current.append(page)
        if commit:  # a commit frame carries the database's size in pages
            transactions.append(current)
            current = []
        offset += _FRAME_HEADER + page_size
    frames = sum(map(len, transactions))
    steady = transactions[len(transactions) // 10 :]
    by_tree: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[str] = collections.Counter()
    by_tree_type: collections.Counter[str] = collections.Counter()
    for transaction in steady:
        for page in transaction:
            name, kind = pages.get(page, ("(free)", "free"))
            by_tree[name] += 1
            by_type[kind] += 1
            by_tree_type[f"{name} {kind}"] += 1
    count = max(len(steady), 1)
    return {
        "page_size": page_size,
        "transactions": len(transactions),
        "frames_an_item": round(frames / items, 2),
        "wal_bytes_an_item": round(frames * (_FRAME_HEADER + page_size) / items),
        "frames_a_transaction": round(sum(map(len, steady)) / count, 2),
        "by_page_type": {k: round(v / count, 2) for k, v in by_type.most_common()},
        "by_btree": {k: round(v / count, 2) for k, v in by_tree.most_common()},
        "by_btree_and_page_type": {k: round(v / count, 2) for k, v in by_tree_type.most_common()},
        "saga_rows": rows,
    }


def _saga_rows(conn: sqlite3.Connection) -> dict[str, Any]:
    """What the saga log's rows hold at the end of the run: average bytes of the columns that
    vary (finished sagas: ``packed``; running ones: ``chunks``) and the table's pages."""
    sizes = conn.execute(
        "SELECT count(*), avg(length(id)), avg(length(input)), "
        "avg(coalesce(length(idempotency_key), 0)), avg(coalesce(length(packed), 0)), "
        "avg(coalesce(length(chunks), 0)) FROM sagaway_instances"
    ).fetchone()
    pages = dict(
        conn.execute(
            "SELECT pagetype, count(*) FROM dbstat WHERE name = 'sagaway_instances' "
            "GROUP BY pagetype"
        ).fetchall()
    )
    columns = ("sagas", "id", "input", "idempotency_key", "packed", "chunks")
    return {
        **{k: round(v or 0, 1) for k, v in zip(columns, sizes, strict=True)},
        "leaf_pages": pages.get("leaf", 0),
        "interior_pages": pages.get("internal", 0),
    }


async def run_engine(path: str, n: int, concurrency: int) -> sqlite3.Connection:
    """``engine_throughput.py``'s run on ``path``; returns a connection that read the file
    once it was in WAL mode (it holds the WAL open: closing the store leaves it in place)."""
    from engine_throughput import build_saga, drive, make_ledger
    from sagaway import Engine
    from sagaway.store import open_store

    store = open_store(f"sqlite:///{path}")
    async with Engine(store, owner_id="bench") as engine:
        holder = sqlite3.connect(path)
        holder.execute("SELECT 1 FROM sqlite_schema").fetchall()
        ledger = make_ledger(store)
        await ledger.setup()
        await drive(engine, build_saga(ledger), range(n), concurrency)
    return holder


def run_checkout(path: str, n: int, concurrency: int) -> sqlite3.Connection:
    """``checkout_cost.py``'s orders on ``path`` (seeded first); returns a connection holding
    the WAL open, as ``run_engine`` does."""
    from checkout_cost import _serve
    from http_checkout import _env, _seed

    _seed(Path(path))
    os.environ.update(_env(Path(path)))
    holder = sqlite3.connect(path)
    holder.execute("SELECT 1 FROM sqlite_schema").fetchall()
    _serve(n, 0, concurrency)
    return holder


def _keep_every_transaction() -> None:
    """Every connection opened with SQLite's automatic checkpoint off (the store's, and the
    checkout's, which open theirs through ``sqlite3.connect`` too), so the WAL keeps every
    transaction of the run (a checkpoint would restart it and overwrite the frames)."""
    opened = sqlite3.connect

    def without_checkpoints(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = opened(*args, **kwargs)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    sqlite3.connect = without_checkpoints  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="sagas (or, with --parse, items)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, help="the page size of the new file")
    parser.add_argument("--parse", metavar="FILE", help="only read FILE and FILE-wal")
    parser.add_argument("--checkout", action="store_true", help="the checkout's orders")
    args = parser.parse_args()
    if args.parse:
        result = parse(args.parse, args.n)
    else:
        from sagaway.store import _sqlite_schema

        _keep_every_transaction()
        if args.page_size:
            _sqlite_schema.PAGE_SIZE = args.page_size
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "frames.db")
            if args.checkout:
                holder = run_checkout(path, args.n, args.concurrency)
            else:
                holder = asyncio.run(run_engine(path, args.n, args.concurrency))
            result = parse(path, args.n)
            holder.close()
    print(
        f"page size {result['page_size']}: {result['frames_an_item']} frames and "
        f"{result['wal_bytes_an_item']} WAL bytes an item, "
        f"{result['frames_a_transaction']} frames a transaction",
        file=sys.stderr,
    )
    for name, frames in result["by_btree"].items():
        print(f"  {name:48s} {frames:6.2f} a transaction", file=sys.stderr)
    print(f"  saga rows (average bytes, pages): {result['saga_rows']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
