"""The saga the crash tests kill, shared by the worker process (``crash_worker.py``) that runs
it until a SIGKILL and by the test that resumes it in-process on the same saga log.

Three steps: ``reserve`` (compensation ``release``), ``pay`` (compensation ``refund``, or a
pivot in the ``pivot``/``operator`` variants) and ``ship``. Every action and compensation is a
participant that dedupes on ``ctx.idempotency_key`` in a side SQLite file: table ``calls`` gets
one row per invocation (so a step run again after its outcome was recorded shows up, dedupe or
not), table ``effects`` one row per key that took effect (so a retry under a new key shows up as
a second effect).

A ``KillPlan`` makes the worker SIGKILL itself at one exact point:

* ``after:N``   right after the Nth durable transition (``after:0``: right after ``start``),
* ``in:WHAT:K`` inside action/compensation WHAT on its Kth call, after its effect and before
  its outcome is recorded (the uncertain case),
* ``backoff:K`` when the Kth retry backoff begins (the engine sleeps ``BACKOFF`` seconds only
  there: its lease and recovery loops sleep much longer, so the clock tells them apart).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sagaway import RetryPolicy, Saga, StepContext, StepFailed, StepKind
from sagaway.clock import SystemClock

OWNER = "crash-worker"  # stable: the restarted engine takes its sagas back at once
KEY = "order-1"
BACKOFF = 0.0123  # seconds; no jitter, so this exact value marks a retry's backoff
RETRY = RetryPolicy(max_attempts=3, initial_delay=BACKOFF, multiplier=1, jitter=0)

VARIANTS = ("ok", "fail", "flaky", "undo_flaky", "pivot", "operator")
"""ok: all succeed. fail: ship rejects (StepFailed), pay and reserve are compensated.
flaky: pay's first call applies its effect and then loses its response (ConnectionError).
undo_flaky: as fail, and refund's first call loses its response. pivot: pay is the pivot
(``on_uncertain="compensate"``, which a pivot cannot honour), ship is retriable. operator: as
pivot, and ship rejects its first call, so the saga stops FAILED until ``engine.retry``."""


@dataclass(frozen=True)
class KillPlan:
    point: str  # "after", "in", "backoff" or "" (never)
    what: str = ""
    n: int = 0

    @classmethod
    def parse(cls, spec: str) -> KillPlan:
        if not spec:
            return cls("")
        point, *rest = spec.split(":")
        if point == "in":
            return cls(point, rest[0], int(rest[1]))
        return cls(point, n=int(rest[0]))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Participant:
    """The side effects, in a SQLite file of their own (the participants' database)."""

    def __init__(self, path: Path | str, plan: KillPlan | None = None) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, what TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (what TEXT, key TEXT, attempt INT)")
        self.plan = plan or KillPlan("")

    def calls(self) -> Counter[str]:
        return Counter(what for (what,) in self.db.execute("SELECT what FROM calls"))

    def effects(self) -> set[tuple[str, str]]:
        return {(key, what) for key, what in self.db.execute("SELECT key, what FROM effects")}

    def call(self, ctx: StepContext, what: str, *, effect: bool = True) -> int:
        """Record the call (and its effect, once per key); return how many calls WHAT has had."""
        self.db.execute(
            "INSERT INTO calls VALUES (?, ?, ?)", (what, ctx.idempotency_key, ctx.attempt)
        )
        if effect:
            self.db.execute(
                "INSERT OR IGNORE INTO effects VALUES (?, ?)", (ctx.idempotency_key, what)
            )
        made = self.calls()[what]
        if self.plan.point == "in" and self.plan.what == what and self.plan.n == made:
            die()
        return made


class KillingClock(SystemClock):
    """The system clock, except that the Nth retry backoff kills the process."""

    def __init__(self, plan: KillPlan) -> None:
        self.plan, self.backoffs = plan, 0

    async def sleep(self, seconds: float) -> None:
        if seconds == BACKOFF:
            self.backoffs += 1
            if self.plan.point == "backoff" and self.plan.n == self.backoffs:
                die()
        await asyncio.sleep(seconds)


def build_saga(variant: str, side: Participant) -> Saga:
    assert variant in VARIANTS, variant
    saga = Saga(f"crash_{variant}", version=1)
    pivot = variant in ("pivot", "operator")

    @saga.step(retry=RETRY)
    async def reserve(ctx: StepContext, order: dict[str, int]) -> str:
        side.call(ctx, "reserve")
        return "reserved"

    @reserve.compensation
    async def release(ctx: StepContext, order: dict[str, int], out: str | None) -> None:
        side.call(ctx, "release")

    @saga.step(
        retry=RETRY,
        compensation_retry=RETRY,
        kind=StepKind.PIVOT if pivot else StepKind.COMPENSATABLE,
        on_uncertain="compensate" if pivot else "retry",
    )
    async def pay(ctx: StepContext, order: dict[str, int]) -> int:
        made = side.call(ctx, "pay")
        if variant == "flaky" and made == 1:
            raise ConnectionError("payment gateway reset the connection")  # after the effect
        return order["amount"]

    if not pivot:

        @pay.compensation
        async def refund(ctx: StepContext, order: dict[str, int], out: int | None) -> None:
            made = side.call(ctx, "refund")
            if variant == "undo_flaky" and made == 1:
                raise ConnectionError("refund response lost")  # after the effect

    @saga.step(retry=RETRY, kind=StepKind.RETRIABLE if pivot else StepKind.COMPENSATABLE)
    async def ship(ctx: StepContext, order: dict[str, int]) -> str:
        rejects = variant in ("fail", "undo_flaky") or (
            variant == "operator" and side.calls()["ship"] == 0
        )
        side.call(ctx, "ship", effect=not rejects)
        if rejects:
            raise StepFailed("Invalid shipping address")
        return "shipped"

    return saga
