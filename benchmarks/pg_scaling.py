"""How the engine on PostgreSQL scales with worker processes, and what stops it.

For each K in ``--workers`` (default 1, 2, 4) it runs ``engine_throughput.py --workers K
--fresh`` (K engine processes, each with its own connections and ``--concurrency`` sagas in
flight, on one fresh schema of one database: the engine benchmark's 3-step sagas with their
effect rows) and, while it runs, watches the machine:

* ``engine CPU``: the K workers' CPU per saga (from the benchmark);
* ``PG CPU``: every ``postgres`` process's CPU per saga (``/proc/<pid>/stat``, the server's
  backends, WAL writer, checkpointer...);
* ``busy``: the machine's CPU use over the run, in cores (``/proc/stat``: 2.0 on this 2-core
  machine is saturated, whoever uses it);
* what the server's sessions of this benchmark were doing, sampled every 50 ms from
  ``pg_stat_activity`` (those whose query names the schema): how many were active on average,
  on CPU (no wait event), waiting for WAL (``WALSync``, ``WALWrite``, ``WALInsert``: commit
  latency) or for a lock (``Lock``/``LWLock``: contention).

So a stop in the sagas/s column can be read as CPU per saga (busy at the core count, PG and
engine CPU per saga steady), commit latency (idle cores, sessions in WAL waits) or lock
contention (sessions in lock waits)::

    python benchmarks/pg_scaling.py --n 6000 --workers 1,2,4

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres?schema=bench_scale"
HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds of process ``pid`` so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def classify(wait_type: str | None, wait_event: str | None) -> str:
    """What an active session is doing: on CPU, waiting for WAL (commit latency), for a lock
    (contention), or something else."""
    if wait_type is None:
        return "cpu"
    if wait_event and wait_event.startswith("WAL"):
        return "wal"
    if wait_type in ("Lock", "LWLock"):
        return "lock"
    return f"{wait_type}:{wait_event}"


class Watch:
    """Samples the server every 50 ms: the active sessions of this benchmark's schema (those
    whose query names it: other users of the server are left out) by what they wait for, and
    the CPU of those sessions' backends and of the server's shared WAL writer, checkpointer
    and background writer."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema
        self.active: Counter[str] = Counter()
        self.samples = 0
        self.backend_cpu: dict[int, float] = {}
        self.shared: dict[int, float] = {}  # pid -> CPU at the start

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for row in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE backend_type IN "
                "('walwriter', 'checkpointer', 'background writer')"
            ):
                self.shared[row[0]] = cpu_of(row[0])
            while not stop.is_set():
                rows = await conn.fetch(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND strpos(query, $1) > 0",
                    self.schema,
                )
                for pid, state, wait_type, wait_event in rows:
                    self.backend_cpu[pid] = max(self.backend_cpu.get(pid, 0.0), cpu_of(pid))
                    if state == "active":
                        self.active[classify(wait_type, wait_event)] += 1
                self.samples += 1
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def pg_cpu(self) -> float:
        """CPU seconds of the benchmark's backends (whole life: they connect for the run)
        plus what the shared processes spent meanwhile."""
        shared = sum(cpu_of(pid) - began for pid, began in self.shared.items())
        return sum(self.backend_cpu.values()) + shared


async def run_one(
    url: str, dsn: str, schema: str, workers: int, n: int, concurrency: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(HERE / "engine_throughput.py"),
        f"--store={url}",
        "--fresh",
        f"--workers={workers}",
        f"--n={n}",
        f"--concurrency={concurrency}",
    ]
    watch = Watch(dsn, schema)
    stop = asyncio.Event()
    busy0, total0 = machine_busy()
    proc = await asyncio.create_subprocess_exec(*command, cwd=HERE, stdout=asyncio.subprocess.PIPE)
    sampler = asyncio.create_task(watch.run(stop))
    out, _ = await proc.communicate()
    stop.set()
    await sampler
    busy, total = machine_busy()
    if proc.returncode != 0:
        raise SystemExit(f"engine_throughput.py --workers {workers} failed")
    r = json.loads(out.decode().strip().splitlines()[-1])
    # The whole run (setup included) for the machine's and PG's figures: per saga they
    # overstate a little, the same way for every K.
    wall = total - total0
    return {
        "workers": workers,
        "sagas_per_s": r["sagas_per_s"],
        "p99_ms": r["p99_ms"],
        "engine_cpu_us_per_saga": r["cpu_us_per_saga"],
        "pg_cpu_us_per_saga": round(watch.pg_cpu() / n * 1e6, 1),
        "busy_cores": round((busy - busy0) / wall * (os.cpu_count() or 1), 2) if wall else None,
        # Active sessions, on average over the samples, by what they were doing.
        "active": {k: round(v / max(watch.samples, 1), 2) for k, v in sorted(watch.active.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="its ?schema= is dropped per run")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32, help="sagas in flight per worker")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    dsn = parts._replace(query="").geturl()
    schema = dict(parse_qsl(parts.query)).get("schema", "sagaway")
    rows = []
    for k in (int(x) for x in args.workers.split(",")):
        row = asyncio.run(run_one(args.url, dsn, schema, k, args.n, args.concurrency))
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    base = rows[0]["sagas_per_s"]
    print(
        f"{'workers':>7} {'sagas/s':>8} {'x':>5} {'p99 ms':>7} {'engine CPU':>11} "
        f"{'PG CPU':>8} {'busy':>5}  active sessions: on CPU / WAL wait / lock wait / other"
    )
    for row in rows:
        s = row["active"]
        other = sum(v for k, v in s.items() if k not in ("cpu", "wal", "lock"))
        print(
            f"{row['workers']:>7} {row['sagas_per_s']:>8,.0f} {row['sagas_per_s'] / base:>5.2f} "
            f"{row['p99_ms']:>7.0f} {row['engine_cpu_us_per_saga']:>8.0f} us "
            f"{row['pg_cpu_us_per_saga']:>5.0f} us {row['busy_cores']:>5}  "
            f"{s.get('cpu', 0):.2f} / {s.get('wal', 0):.2f} / {s.get('lock', 0):.2f} / "
            f"{other:.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "pg_scaling",
                "n": args.n,
                "concurrency_per_worker": args.concurrency,
                "cores": os.cpu_count(),
                "load_average": os.getloadavg(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
