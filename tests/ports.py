"""Loopback ports for the servers a test starts in child processes, told where to listen.

A port found by binding port 0 and closing the socket is free only until somebody else binds
it: every process's ``bind(0)`` (and every outgoing connection) draws from the kernel's one
ephemeral range, so under parallel test workers another test's server can take the port
before ours starts, and then our client talks to the wrong server. Ports handed out here come
from below the ephemeral range, which the kernel never hands out by itself, in a block of
their own per pytest-xdist worker, each checked free by a bind before it is given. A test
that serves in its own process binds port 0 and keeps the socket instead (no race at all).

Importable as ``ports`` from any test module: ``tests/conftest.py`` puts ``tests/`` on
``sys.path``.
"""

from __future__ import annotations

import os
import socket

__all__ = ["free_port", "free_ports_in_a_row"]

FIRST_PORT = 20_000
BLOCK = 1_000  # ports per test worker; a worker wraps around its block, checking each


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _worker_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = FIRST_PORT + index * BLOCK
    if start + BLOCK > _ephemeral_start():
        raise RuntimeError(
            f"test worker {worker or 'main'}: no port block below the ephemeral range"
        )
    return range(start, start + BLOCK)


_BLOCK = _worker_block()
# Where this process starts in its block: two runs side by side (not under xdist) start apart.
_cursor = os.getpid() % BLOCK


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free ports of this worker's block."""
    global _cursor
    for _ in range(BLOCK):
        first = _BLOCK[0] + _cursor % (BLOCK - count + 1)
        _cursor = (first - _BLOCK[0]) + count
        if all(_bindable(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} free ports in a row in {_BLOCK}")


def free_port() -> int:
    """A free port of this worker's block: nobody else's test server will be given it."""
    return free_ports_in_a_row(1)
