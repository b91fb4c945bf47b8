"""What the benchmarks read of other processes, and how they start a server in one: CPU time
from ``/proc`` (the number to compare on a shared machine, not wall time), the RabbitMQ
broker's pid, and a server subprocess that prints ``serving on http://host:port``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path

import httpx

_TICK = os.sysconf("SC_CLK_TCK")
_SERVING = re.compile(r"serving on (http://[\d.]+:\d+)")


def cpu_seconds(pid: int | Iterable[int] | None) -> float:
    """User + system CPU of process ``pid`` (or the sum over several pids) so far; 0.0 for a
    process that is unknown or gone."""
    user, kernel = cpu_split(pid)
    return user + kernel


def cpu_split(pid: int | Iterable[int] | None) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of process ``pid`` (or summed over several pids) so
    far; zeros for a process that is unknown or gone."""
    if pid is None:
        return 0.0, 0.0
    if not isinstance(pid, int):
        splits = [cpu_split(one) for one in pid]
        return sum(s[0] for s in splits), sum(s[1] for s in splits)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def broker_pid() -> int | None:
    """The pid of RabbitMQ's Erlang VM on this machine, if one runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    return int(entry.name)
    return None


@contextlib.contextmanager
def server_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    start_timeout: float = 60.0,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``argv`` (a server that prints ``serving on URL``) until its ``/health`` answers 200;
    yield its URL and process; terminate it afterwards (killed if it takes over 20 s)."""
    proc = subprocess.Popen(
        argv,
        env=None if env is None else dict(env),
        pass_fds=pass_fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + start_timeout
        for line in proc.stdout:
            match = _SERVING.search(line)
            if match:
                url = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if url is None:
            raise SystemExit(f"{' '.join(argv)} did not start (exit {proc.poll()})")
        # Servers log to stdout (every saga, some of them): drained, or the pipe blocks when full.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(argv)} exited ({proc.returncode}) unhealthy")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def paced(
    order: Callable[[int], Awaitable[None]],
    *,
    first: int,
    rate: float,
    seconds: float,
    slots: asyncio.Semaphore,
) -> float:
    """Start ``order(first)``, ``order(first + 1)``, ... at ``rate`` a second for ``seconds``,
    each after taking one of ``slots`` (``order`` releases it when done); wait for them all and
    return the seconds it took. An order that would start after ``seconds`` is not started."""
    in_flight: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    for i in itertools.count(first):
        due = started + (i - first) / rate
        if due >= started + seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        if time.perf_counter() >= started + seconds:
            slots.release()
            break
        task = asyncio.create_task(order(i))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    return time.perf_counter() - started
