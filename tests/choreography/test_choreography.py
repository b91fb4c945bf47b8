"""The choreography library on real databases (SQLite, PostgreSQL) and a real broker.

A toy order flow of three services, each on its own database: ``shop`` emits ``placed``; the
``bank`` debits an account (``charged``, or ``charge-refused`` when the balance is short); the
``post`` office ships (``shipped``) or refuses (``ship-refused``), upon which the bank refunds
(``refunded``) and the shop cancels (``cancelled``). The monitor records each correlation into a
real SQLite saga store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import servers
from choreokit import Toy, running
from rabbitkit import until
from sagaway import SagaStatus
from sagaway.choreography import DomainEvent, InProcessBus
from sagaway.state import EventType, Phase


@pytest.fixture(params=["sqlite", "postgresql"])
async def databases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
        return
    async with contextlib.AsyncExitStack() as stack:
        urls = {}
        for n in ("shop", "bank", "post"):
            schema = await stack.enter_async_context(servers.fresh_pg_schema(f"choreo_{n}"))
            urls[n] = servers.pg_schema_url(schema)
        yield urls


async def _shipped(toy: Toy, order_id: str) -> bool:
    return await toy.order_status(order_id) == "shipped"


async def _ended(toy: Toy, order_id: str) -> Any:
    record = await toy.monitor.wait(order_id, timeout=30)
    assert record is not None
    assert record.status.is_terminal, record
    return record


async def test_happy_path_recorded_as_a_saga(databases: dict[str, str], tmp_path: Path) -> None:
    async with running(databases, InProcessBus(), f"sqlite:///{tmp_path}/log.db") as toy:
        order_id = await toy.place(2_500, "Toronto")
        record = await _ended(toy, order_id)
        assert record.status is SagaStatus.SUCCEEDED
        assert record.name == "toy-order"
        full = await toy.store.get(order_id)
        emitted = [(e.step, e.detail) for e in full.history if e.type is EventType.STEP_SUCCEEDED]
        assert emitted == [
            ("placed", "placed emitted by shop"),
            ("charged", "charged emitted by bank"),
            ("shipped", "shipped emitted by post"),
        ]
        assert full.history[-1].type is EventType.SAGA_SUCCEEDED
        assert await toy.balance() == 7_500
        assert await toy.order_status(order_id) == "shipped"
        # A relay deletes what it published once the bus took it, after the subscribers (the
        # monitor among them) have seen it: the saga can end just before the last delete.
        services = (toy.shop, toy.bank, toy.post)

        async def outboxes_empty() -> bool:
            return all([await service.outbox_count() == 0 for service in services])

        await until(outboxes_empty, "the relays to delete what they published")


async def test_refusal_compensates_and_conserves_money(
    databases: dict[str, str], tmp_path: Path
) -> None:
    async with running(databases, InProcessBus(), f"sqlite:///{tmp_path}/log.db") as toy:
        order_id = await toy.place(2_500, "Nowhere")
        record = await _ended(toy, order_id)
        assert record.status is SagaStatus.COMPENSATED
        assert await toy.balance() == 10_000
        assert await toy.order_status(order_id) == "cancelled"
        full = await toy.store.get(order_id)
        rows = sorted(full.steps.values(), key=lambda row: row.started_at or 0)
        undone = [row.name for row in rows if row.phase is Phase.COMPENSATION]
        assert undone == ["ship-refused", "refunded", "cancelled"]
        assert "cancelled from shop" in (full.error or "")


async def test_redelivered_events_apply_once(tmp_path: Path) -> None:
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
    async with running(urls, InProcessBus(), f"sqlite:///{tmp_path}/log.db") as toy:
        order_id = await toy.place(1_000, "Toronto")
        await _ended(toy, order_id)
        full = await toy.store.get(order_id)
        events = [
            DomainEvent.from_json({**row.output, **_event_fields(full, name)})
            for (name, _), row in full.steps.items()
        ]
        before = (await toy.balance(), len(full.history), dict(toy.handled))
        await toy.bus.publish(events)  # every event of the correlation, delivered again
        await toy.bus.publish(events)
        after = await toy.store.get(order_id)
        assert (await toy.balance(), len(after.history), toy.handled) == before
        assert after.status is SagaStatus.SUCCEEDED


def _event_fields(record: Any, step: str) -> dict[str, Any]:
    row = record.step(step)
    return {
        "id": row.output["event_id"],
        "type": step,
        "correlation_id": record.id,
        "source": row.output["source"],
        "at": row.started_at,
    }


async def test_events_left_in_the_outbox_are_published_by_the_next_relay(tmp_path: Path) -> None:
    """A crash between the commit and the publish: the event waits in the service's outbox
    (committed with the order) and the next relay, in a new process, publishes it."""
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
    store_url = f"sqlite:///{tmp_path}/log.db"
    async with running(urls, InProcessBus(), store_url) as toy:
        for relay in toy.relays:
            await relay.stop()  # nobody publishes: as if the process died after the commit
        order_id = await toy.place(1_000, "Toronto")
        assert await toy.shop.outbox_count() == 1
        assert await toy.store.load(order_id) is None
    async with running(urls, InProcessBus(), store_url) as toy:
        record = await _ended(toy, order_id)
        assert record.status is SagaStatus.SUCCEEDED
        assert await toy.balance() == 9_000


async def test_deadline_flags_a_stuck_saga(tmp_path: Path) -> None:
    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
    async with running(urls, InProcessBus(), f"sqlite:///{tmp_path}/log.db") as toy:
        toy.bus.subscriptions[:] = [s for s in toy.bus.subscriptions if s.name != "bank"]
        order_id = await toy.place(1_000, "Toronto")
        await toy.relays[0].drain()
        record = await toy.store.get(order_id)
        assert record.status is SagaStatus.RUNNING
        assert record.deadline_at is not None
        assert await toy.monitor.sweep(record.deadline_at - 1) == []
        assert await toy.monitor.sweep(record.deadline_at + 1) == [order_id]
        assert await toy.monitor.sweep(record.deadline_at + 2) == []  # flagged once
        flagged = await toy.store.get(order_id)
        assert flagged.status is SagaStatus.RUNNING
        assert "deadline" in (flagged.error or "")
        assert [e.type for e in flagged.history].count(EventType.DEADLINE_EXPIRED) == 1


@pytest.mark.parametrize("path", ["happy", "refused"])
async def test_over_rabbitmq(path: str, tmp_path: Path) -> None:
    from sagaway.choreography.rabbitmq import RabbitBus

    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
    async with servers.fresh_rabbit_vhost("choreo") as amqp:
        bus = RabbitBus(amqp, queue_type="classic")
        async with running(urls, bus, f"sqlite:///{tmp_path}/log.db") as toy:
            order_id = await toy.place(2_500, "Toronto" if path == "happy" else "Nowhere")
            record = await _ended(toy, order_id)
            if path == "happy":
                assert record.status is SagaStatus.SUCCEEDED
                assert await toy.balance() == 7_500
            else:
                assert record.status is SagaStatus.COMPENSATED
                assert await toy.balance() == 10_000
            full = await toy.store.get(order_id)
            sources = {row.output["source"] for row in full.steps.values()}
            assert sources == {"shop", "bank", "post"}


@pytest.mark.slow
async def test_service_killed_after_its_commit_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A real SIGKILL between the bank's commit and its ack/publish: the broker redelivers
    ``placed`` to the next process, whose inbox answers it (no second debit, no second event),
    and whose relay publishes the ``charged`` event the dead process left in its outbox."""
    import asyncio
    import json
    import signal
    import sys

    from sagaway.choreography.rabbitmq import RabbitBus

    urls = {n: f"sqlite:///{tmp_path / n}.db" for n in ("shop", "bank", "post")}
    store_url = f"sqlite:///{tmp_path}/log.db"
    async with servers.fresh_rabbit_vhost("choreocrash") as amqp:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("crash_bank.py")),
            json.dumps(urls),
            amqp,
            store_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        order_id = (await proc.stdout.readline()).decode().strip()
        assert await proc.wait() == -signal.SIGKILL
        assert order_id

        async with running(urls, RabbitBus(amqp, queue_type="classic"), store_url) as toy:
            assert await toy.balance() == 7_500  # debited by the dead process, once
            record = await _ended(toy, order_id)
            assert record.status is SagaStatus.SUCCEEDED
            assert await toy.balance() == 7_500
            assert "charge" not in toy.handled  # the redelivery found the inbox row
            # The shop takes ``shipped`` off its own queue, beside the monitor that ended the
            # saga on it: nothing orders the two (it failed twice in a loaded full suite).
            await until(lambda: _shipped(toy, order_id), "the shop to ship the order")
            full = await toy.store.get(order_id)
            recorded = [e.step for e in full.history if e.type is EventType.STEP_SUCCEEDED]
            assert recorded == ["placed", "charged", "shipped"]
