"""The sagas of the wait crash tests and the effects table both processes share.

``wait-crash``: reserve (undone by release), wait for ``confirmed`` (600 s), ship.
``sleep-crash``: before, sleep three days, wake. Every step's run is counted in a SQLite
table keyed by (saga, step, phase), so a test sees any effect run twice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sagaway import Saga, StepContext

WAIT_TIMEOUT = 600.0
THREE_DAYS = 3 * 86400.0


class Effects:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with sqlite3.connect(self.path) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, runs INTEGER NOT NULL)"
            )

    def record(self, ctx: StepContext) -> None:
        with sqlite3.connect(self.path, timeout=30) as db:
            db.execute(
                "INSERT INTO effects VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET runs = runs + 1",
                (ctx.idempotency_key,),
            )

    def runs(self) -> dict[str, int]:
        with sqlite3.connect(self.path, timeout=30) as db:
            return dict(db.execute("SELECT key, runs FROM effects").fetchall())


def build(effects: Effects) -> tuple[Saga, Saga]:
    waiting = Saga("wait-crash")

    @waiting.step
    async def reserve(ctx: StepContext, order: dict[str, int]) -> int:
        effects.record(ctx)
        return order["n"]

    @reserve.compensation
    async def release(ctx: StepContext, order: dict[str, int], reserved: int) -> None:
        effects.record(ctx)

    waiting.wait("confirmed", timeout=WAIT_TIMEOUT)

    @waiting.step
    async def ship(ctx: StepContext, order: dict[str, int]) -> None:
        effects.record(ctx)

    sleeping = Saga("sleep-crash")

    @sleeping.step
    async def before(ctx: StepContext, order: dict[str, int]) -> None:
        effects.record(ctx)

    sleeping.sleep("cool_off", seconds=THREE_DAYS)

    @sleeping.step
    async def wake(ctx: StepContext, order: dict[str, int]) -> None:
        effects.record(ctx)

    return waiting, sleeping
