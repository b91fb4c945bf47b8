"""The saga pages in Chromium: a running saga's timeline follows it without a reload, cancel and
retry from the page, the saga list and its filters.

The sagas are written into the server's saga log by this test, as another engine would have
left them: one RUNNING under a live lease of an engine that then goes away, one FAILED because a
compensation could not finish. The server's engine then does the real work (claims, compensates,
retries) and the open page shows it as it happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from browserkit import Server
from playwright.sync_api import Page, expect

from sagaway import Change, Event, EventType, Phase, SagaStatus, StepRecord, StepStatus
from sagaway.state import NewSaga
from sagaway.store import open_store

GHOST = "ghost-engine"  # the engine that "left" the saga: it never runs
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on a thread of its own: Playwright's sync API already runs an
    event loop on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def order_input(order_id: str) -> dict[str, object]:
    return {
        "order_id": order_id,
        "customer_id": "user_1",
        "items": [{"product_id": "product_1", "quantity": 1}],
        "shipping_address": None,
        "payment_method": "card",
    }


async def _create(db_url: str, new: NewSaga) -> str:
    async with open_store(db_url) as store:
        saga_id, created = await store.create(new)
        assert created
        return saga_id


async def _release(db_url: str, saga_id: str) -> None:
    """The ghost engine hands its lease back (as a stopping engine would)."""
    async with open_store(db_url) as store:
        await store.commit(saga_id, GHOST, Change(release_lease=True), time.time())


def running_saga(db_url: str, saga_id: str) -> str:
    now = time.time()
    new = NewSaga(
        id=saga_id,
        name="checkout",
        version=1,
        input=order_input(f"ord_{saga_id}"),
        at=now,
        status=SagaStatus.RUNNING,
        owner=GHOST,
        lease_expires_at=now + 3600,  # held until _release: the server cannot take it before
        steps=[
            StepRecord(
                "validate_order",
                Phase.FORWARD,
                StepStatus.SUCCEEDED,
                1,
                None,
                None,
                False,
                now,
                now,
            ),
            StepRecord(
                "reserve_inventory", Phase.FORWARD, StepStatus.RUNNING, 1, None, None, False, now
            ),
        ],
        events=[
            Event(now, EventType.SAGA_STARTED),
            Event(now, EventType.STEP_STARTED, "validate_order", None, 1, GHOST),
            Event(now, EventType.STEP_SUCCEEDED, "validate_order", None, 1),
            Event(now, EventType.STEP_STARTED, "reserve_inventory", None, 1, GHOST),
        ],
    )
    return run_async(_create(db_url, new))


def failed_saga(db_url: str, saga_id: str) -> str:
    now = time.time()
    error = "compensation of reserve_inventory failed: ConnectionError: shop database down"
    comp = Phase.COMPENSATION
    new = NewSaga(
        id=saga_id,
        name="checkout",
        version=1,
        input=order_input(f"ord_{saga_id}"),
        at=now,
        status=SagaStatus.FAILED,
        steps=[
            StepRecord(
                "validate_order",
                Phase.FORWARD,
                StepStatus.SUCCEEDED,
                1,
                None,
                None,
                False,
                now,
                now,
            ),
            StepRecord(
                "reserve_inventory",
                Phase.FORWARD,
                StepStatus.FAILED,
                3,
                None,
                "timed out",
                True,
                now,
                now,
            ),
            StepRecord(
                "reserve_inventory",
                comp,
                StepStatus.FAILED,
                3,
                None,
                "ConnectionError: shop database down",
                False,
                now,
                now,
            ),
        ],
        events=[
            Event(now, EventType.SAGA_STARTED),
            Event(now, EventType.STEP_FAILED, "reserve_inventory", None, 3, "timed out"),
            Event(now, EventType.COMPENSATION_STARTED, "reserve_inventory", comp, 1, GHOST),
            Event(now, EventType.COMPENSATION_FAILED, "reserve_inventory", comp, 3, "down"),
            Event(now, EventType.SAGA_FAILED, detail=error),
        ],
    )
    return run_async(_create(db_url, new))


def step(page: Page, name: str, phase: str) -> object:
    return page.get_by_test_id("saga-timeline").locator(
        f"[data-testid=timeline-step][data-step={name}][data-phase={phase}]"
    )


def test_cancel_a_running_saga_and_watch_it_compensate_live(
    server: Server, page: Page, shot: Callable[[str], None]
) -> None:
    saga_id = running_saga(server.db_url, "01browsercancel0000000000000001")
    page.goto(f"{server.url}/ui/sagas/{saga_id}")
    expect(page.get_by_test_id("saga-status")).to_have_text("RUNNING")
    reserve = page.locator(
        "[data-testid=timeline-step][data-step=reserve_inventory][data-phase=forward]"
    )
    expect(reserve).to_have_attribute("data-status", "RUNNING")
    expect(page.get_by_test_id("retry-saga")).to_have_count(0)
    shot("saga-running")

    page.get_by_test_id("cancel-saga").click()
    expect(page.get_by_test_id("saga-message")).to_contain_text("cancel requested")
    # The page is never reloaded from here: what follows arrives over its event stream.
    page.evaluate("window.notReloaded = true")
    _release_lease(server.db_url, saga_id)
    undo = page.locator(
        "[data-testid=timeline-step][data-step=reserve_inventory][data-phase=compensation]"
    )
    expect(undo).to_have_attribute("data-status", "COMPENSATED", timeout=30_000)
    expect(page.get_by_test_id("saga-status")).to_have_text("COMPENSATED")
    expect(reserve).to_have_attribute("data-status", "FAILED")  # closed, outcome uncertain
    assert page.evaluate("window.notReloaded") is True
    expect(page.get_by_test_id("cancel-saga")).to_have_count(0)
    shot("saga-cancelled")


def _release_lease(db_url: str, saga_id: str) -> None:
    run_async(_release(db_url, saga_id))


def test_retry_a_failed_saga_from_its_page(
    server: Server, page: Page, shot: Callable[[str], None]
) -> None:
    saga_id = failed_saga(server.db_url, "01browserretry00000000000000001")
    page.goto(f"{server.url}/ui/sagas/{saga_id}")
    expect(page.get_by_test_id("saga-status")).to_have_text("FAILED")
    undo = page.locator(
        "[data-testid=timeline-step][data-step=reserve_inventory][data-phase=compensation]"
    )
    expect(undo).to_have_attribute("data-status", "FAILED")
    expect(page.get_by_test_id("cancel-saga")).to_have_count(0)
    shot("saga-failed")

    page.get_by_test_id("retry-saga").click()
    expect(page.get_by_test_id("saga-message")).to_contain_text("retry started")
    expect(undo).to_have_attribute("data-status", "COMPENSATED")
    expect(undo.get_by_test_id("step-attempts")).to_have_text("4")
    expect(page.get_by_test_id("saga-status")).to_have_text("COMPENSATED")
    expect(page.get_by_test_id("retry-saga")).to_have_count(0)
    shot("saga-retried")

    # Retrying again is refused with the reason, not an error page.
    page.goto(f"{server.url}/ui/sagas/{saga_id}")
    expect(page.get_by_test_id("retry-saga")).to_have_count(0)


def test_saga_list_filters_by_status_and_links_to_sagas(
    server: Server, page: Page, shot: Callable[[str], None]
) -> None:
    failed_saga(server.db_url, "01browserlist000000000000000001")
    page.goto(f"{server.url}/ui/sagas")
    table = page.get_by_test_id("saga-list")
    expect(table.locator("tbody tr[data-saga-id]").first).to_be_visible()
    shot("saga-list")
    page.get_by_label("Status").select_option("FAILED")
    page.get_by_role("button", name="Filter").click()
    rows = table.locator("tbody tr[data-saga-id]")
    expect(rows.first).to_have_attribute("data-status", "FAILED")
    statuses = {row.get_attribute("data-status") for row in rows.all()}
    assert statuses == {"FAILED"}
    rows.first.get_by_role("link").click()
    expect(page.get_by_test_id("saga-status")).to_have_text("FAILED")
