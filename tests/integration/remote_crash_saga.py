"""The remote saga the remote crash tests kill (``remote_crash_worker.py`` runs it until a
SIGKILL; the test resumes it in-process on the same saga log).

``reserve`` (inventory.reserve, compensation inventory.release) and ``pay`` (payment.charge,
compensation payment.refund) run at participants over a message transport (the stub
dispatcher, answering every published command by itself): the saga parks on each. ``ship`` is
local; in the ``fail`` variant it refuses, so both remote steps are compensated.

The participants keep their effects in a SQLite file of their own, with an inbox: the effect
and the recorded reply are written in one transaction, keyed by the command's message id, and a
redelivery is answered from the inbox. A ``KillPlan`` SIGKILLs the worker at one point:

* ``after:N``          right after the Nth durable transition the runner commits, before its
                       outbox message is published (the relay's fast path never runs);
* ``handler:WHAT:K``   in participant command WHAT on its Kth call, after its commit and before
                       its reply leaves (the reply is lost: the park's timeout re-sends).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagaway import RetryPolicy, Saga, StepContext, StepFailed
from sagaway.transport.base import Command, Reply
from sagaway.transport.stub import StubDispatcher

OWNER = "remote-crash-worker"
KEY = "order-remote-1"
# Out of reach of any test run: only a clock the test shifts past it times a park out, so a
# command sent twice is one the test meant to re-send (the "resent" scenarios), never one
# whose reply was merely slow on a loaded machine.
REPLY_TIMEOUT = 3600.0
VARIANTS = ("ok", "fail")
TOPICS = ("inventory.reserve", "inventory.release", "payment.charge", "payment.refund")


@dataclass(frozen=True)
class KillPlan:
    point: str  # "after", "handler" or "" (never)
    what: str = ""
    n: int = 0

    @classmethod
    def parse(cls, spec: str) -> KillPlan:
        if not spec:
            return cls("")
        point, *rest = spec.split(":")
        if point == "handler":
            return cls(point, rest[0], int(rest[1]))
        return cls(point, n=int(rest[0]))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Participants:
    """Inventory and payment on one SQLite file, each command applied once (the inbox)."""

    def __init__(self, path: Path | str, plan: KillPlan | None = None) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY, reply TEXT)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS effects (message_id TEXT, topic TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (topic TEXT, message_id TEXT)")
        self.plan = plan or KillPlan("")
        self._calls: dict[str, int] = {}

    def handle(self, command: Command) -> Reply:
        topic = command.topic
        self.db.execute("INSERT INTO calls VALUES (?, ?)", (topic, command.message_id))
        self._calls[topic] = self._calls.get(topic, 0) + 1
        self.db.execute("BEGIN IMMEDIATE")
        row = self.db.execute(
            "SELECT reply FROM inbox WHERE message_id = ?", (command.message_id,)
        ).fetchone()
        if row is not None:  # a redelivery: the recorded answer, no second effect
            self.db.execute("COMMIT")
            return Reply.from_json(json.loads(row[0]))
        output: Any = {"id": f"{topic}:{command.saga_id[-6:]}"}
        reply = Reply.success(command, None if command.forward_key else output)
        self.db.execute("INSERT INTO effects VALUES (?, ?)", (command.message_id, topic))
        self.db.execute(
            "INSERT INTO inbox VALUES (?, ?)", (command.message_id, json.dumps(reply.to_json()))
        )
        self.db.execute("COMMIT")
        plan = self.plan
        if plan.point == "handler" and plan.what == topic and self._calls[topic] == plan.n:
            die()
        return reply

    def effects(self) -> list[tuple[str, str]]:
        return sorted(self.db.execute("SELECT message_id, topic FROM effects").fetchall())

    def dispatcher(self) -> StubDispatcher:
        stub = StubDispatcher(parks=True, auto_reply=True)
        for topic in TOPICS:
            stub.register(topic, self.handle)
        return stub


def build_saga(variant: str) -> Saga:
    saga = Saga(f"remote-crash-{variant}")
    fast = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0)

    @saga.remote("inventory", "reserve", compensation="release", timeout=REPLY_TIMEOUT, retry=fast)
    def reserve(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
        return {"qty": order["qty"]}

    @saga.remote("payment", "charge", compensation="refund", timeout=REPLY_TIMEOUT, retry=fast)
    def pay(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
        return {"amount": order["amount"]}

    @saga.step(retry=fast)
    async def ship(ctx: StepContext, order: dict[str, Any]) -> str:
        if variant == "fail":
            raise StepFailed("no carrier")
        return "shipped"

    return saga
