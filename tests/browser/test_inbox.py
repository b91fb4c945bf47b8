"""The inbox in Chromium: sagas parked until a reply or a signal, soonest deadline first, what
each waits for, its deadline counting down, and a saga parked by another process appearing
without a reload."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from browserkit import Server
from playwright.sync_api import Page, expect

from sagaway import Change, Event, EventType, SagaStatus
from sagaway.state import NewSaga, Park
from sagaway.store import open_store

GHOST = "inbox-ghost-engine"  # the engine that parked the sagas: it never runs
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _park(db_url: str, saga_id: str, waiting_for: str, seconds: float) -> None:
    """A saga another engine started and parked: it waits ``seconds`` for ``waiting_for``."""
    now = time.time()
    new = NewSaga(
        id=saga_id,
        name="checkout",
        version=1,
        input={"order_id": f"ord_{saga_id}", "customer_id": "user_1", "items": []},
        at=now,
        status=SagaStatus.RUNNING,
        owner=GHOST,
        lease_expires_at=now + 3600,
        events=[Event(now, EventType.SAGA_STARTED)],
    )
    async with open_store(db_url) as store:
        _, created = await store.create(new)
        assert created
        await store.commit(saga_id, GHOST, Change(park=Park(waiting_for, now + seconds)), now)


def park(server: Server, saga_id: str, waiting_for: str, seconds: float) -> None:
    run_async(_park(server.db_url, saga_id, waiting_for, seconds))


def test_inbox_lists_waiting_sagas_with_a_countdown(
    server: Server, page: Page, shot: Callable[[str], None]
) -> None:
    park(server, "01inboxlater00000000000000000001", "signal:approve_payment", 3 * 3600)
    park(server, "01inboxsoon000000000000000000001", "reply:payment.start", 600)
    page.goto(f"{server.url}/ui/inbox")
    page.evaluate("window.notReloaded = true")
    inbox = page.get_by_test_id("inbox")
    rows = inbox.locator("tbody tr[data-saga-id]")
    expect(rows).to_have_count(2)
    assert [row.get_attribute("data-saga-id") for row in rows.all()] == [
        "01inboxsoon000000000000000000001",
        "01inboxlater00000000000000000001",
    ], "soonest deadline first"
    expect(rows.first).to_contain_text("reply to payment.start")
    expect(rows.first.get_by_test_id("signal-saga")).to_have_count(0)
    expect(rows.nth(1)).to_contain_text("signal approve_payment")
    countdown = rows.first.get_by_test_id("deadline")
    first = countdown.inner_text()
    assert first.startswith(("9m", "10m")), first
    expect(countdown).not_to_have_text(first)  # it counts down, second by second
    shot("inbox")

    # Parked by another process while the page is open: it shows up without a reload.
    park(server, "01inboxnew0000000000000000000001", "signal:confirm_address", 60)
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-saga-id", "01inboxnew0000000000000000000001")
    assert page.evaluate("window.notReloaded") is True

    # Only what a person must act on.
    page.get_by_label("Waiting for").select_option("signal:")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)
    for row in rows.all():
        assert (row.get_attribute("data-waiting-for") or "").startswith("signal:")

    # A signal button on the sagas waiting for a signal (none on those waiting for a reply);
    # the server's answer is shown (these sagas were parked by hand, with no wait step: the
    # engine refuses, saying why).
    button = rows.first.get_by_test_id("signal-saga")
    expect(button).to_have_text("Send confirm_address")
    button.click()
    message = page.get_by_test_id("saga-message")
    expect(message).to_contain_text("has no wait step in flight")
    shot("inbox-signal-refused")

    # The saga page says what it waits for and until when.
    rows.first.get_by_role("link").click()
    expect(page.get_by_test_id("saga-waiting")).to_contain_text("signal confirm_address, until")
