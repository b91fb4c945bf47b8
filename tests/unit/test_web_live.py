"""Live UI streams: what N open pages cost is one render per change, not N."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from sagaway.hooks import ClaimReason
from sagaway.web.live import LiveUpdates, SharedRenders, Watch, sse_event
from sagaway.web.router import _when

PERIOD = 0.02


def transition(live: LiveUpdates, saga_id: str = "s") -> None:
    """What the engine calls after a durable transition of ``saga_id``."""
    live.after_commit(SimpleNamespace(id=saga_id), None, 0.0)  # type: ignore[arg-type]


async def next_event(stream: AsyncIterator[str]) -> str:
    """The next event of a stream (comments and the retry line skipped)."""
    while True:
        chunk = await anext(stream)
        if chunk.startswith("event:"):
            return chunk


async def test_a_fragment_is_rendered_once_per_change_for_every_stream() -> None:
    live = LiveUpdates()
    renders = 0

    async def rows() -> str:
        nonlocal renders
        renders += 1
        await asyncio.sleep(0)  # a store read: the other streams ask while it runs
        return f"<tr>{live.version}</tr>\n<tr>end</tr>"

    fragments = [("saga-rows", "rows", rows)]
    # Renders are shared within a tick of the loop's clock: the twenty first renders must fall
    # in one tick for "one render" to hold. With 20 ms ticks a loaded machine (the process
    # descheduled a few ms between two streams) straddled a boundary now and then (2 renders,
    # then 3): a long tick, entered at its start, leaves the streams half a second.
    period = 0.5
    loop = asyncio.get_running_loop()
    await asyncio.sleep(period - loop.time() % period)  # align on a tick, not a synchronisation
    streams = [live.fragments(fragments, period=period) for _ in range(20)]
    try:
        first = await asyncio.gather(*(next_event(s) for s in streams))
        assert set(first) == {"event: saga-rows\ndata: <tr>0</tr>\ndata: <tr>end</tr>\n\n"}
        assert renders == 1
        transition(live)
        transition(live)
        second = await asyncio.gather(*(next_event(s) for s in streams))
        assert set(second) == {"event: saga-rows\ndata: <tr>2</tr>\ndata: <tr>end</tr>\n\n"}
        assert renders == 2, "one render for the two transitions and the twenty pages"
    finally:
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_page_opened_after_a_transition_never_gets_the_older_render() -> None:
    # The browser test's flake: a shop page rendered mid-saga put its stock in the tick's cache;
    # the next page, opened after the saga ended but in the same tick, was sent that older stock
    # over the one it showed, and read it.
    live = LiveUpdates()

    async def rows() -> str:
        return f"stock after {live.version} transitions"

    fragments = [("stock", "stock", rows)]
    one_tick = 1e9  # every stream below in the same tick: sharing is allowed, staleness not
    first = live.fragments(fragments, period=one_tick)
    later = live.fragments(fragments, period=one_tick)
    again = live.fragments(fragments, period=one_tick)
    try:
        assert await next_event(first) == "event: stock\ndata: stock after 0 transitions\n\n"
        transition(live)
        assert await next_event(later) == "event: stock\ndata: stock after 1 transitions\n\n"
        assert await next_event(again) == "event: stock\ndata: stock after 1 transitions\n\n"
        assert live.renders.renders == 2, "the newer render is shared in its turn"
    finally:
        for stream in (first, later, again):
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_stream_sends_nothing_while_nothing_changes() -> None:
    live = LiveUpdates()

    async def rows() -> str:
        return f"rows {live.version}"

    # Re-read every tick (sagas other processes drive), sent only when it changed.
    stream = live.fragments([("saga-rows", "rows", rows)], period=PERIOD, poll_seconds=0)
    try:
        await next_event(stream)
        pending = asyncio.ensure_future(next_event(stream))
        for _ in range(5):  # five ticks without a transition
            await asyncio.sleep(PERIOD)
        assert not pending.done()
        transition(live)
        assert await pending == "event: saga-rows\ndata: rows 1\n\n"
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_failed_render_is_tried_again_on_the_next_tick() -> None:
    live = LiveUpdates()
    calls = 0

    async def rows() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return "rows"

    stream = live.fragments([("saga-rows", "rows", rows)], period=PERIOD)
    try:
        assert await next_event(stream) == "event: saga-rows\ndata: rows\n\n"
        assert calls == 2
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_followers_of_a_saga_share_one_watch_and_one_render() -> None:
    live = LiveUpdates()
    a, b = live.follow("s1"), live.follow("s1")
    assert a is b
    renders = 0

    async def timeline() -> tuple[str, str]:
        nonlocal renders
        renders += 1
        await asyncio.sleep(0)
        return f"v{a.count}", ""

    waiting = [asyncio.ensure_future(w.wait(0, 10)) for w in (a, b)]
    transition(live, "s1")
    assert await asyncio.gather(*waiting) == [True, True]
    results = await asyncio.gather(a.render(a.count, timeline), b.render(b.count, timeline))
    assert results == [("v1", ""), ("v1", "")]
    assert renders == 1
    assert not await a.wait(a.count, 0.001), "no transition: the wait times out"
    live.unfollow("s1", a)
    live.unfollow("s1", b)
    fresh = live.follow("s1")
    assert fresh is not a, "the last follower gone, the watch went with it"
    assert isinstance(fresh, Watch)


async def test_a_failed_timeline_render_is_not_shared_with_the_next_page() -> None:
    watch = LiveUpdates().follow("s1")
    calls = 0

    async def timeline() -> tuple[str, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return "timeline", ""

    with pytest.raises(ConnectionError):
        await watch.render(0, timeline)
    assert await watch.render(0, timeline) == ("timeline", "")


async def test_the_event_is_encoded_once_with_the_render() -> None:
    renders = SharedRenders()

    async def rows() -> str:
        return "<tr>1</tr>\n<tr>2</tr>"

    first = await renders.get("rows", 1, 0, rows, "saga-rows")
    again = await renders.get("rows", 1, 0, rows, "saga-rows")
    assert first == (0, "<tr>1</tr>\n<tr>2</tr>", sse_event("saga-rows", "<tr>1</tr>\n<tr>2</tr>"))
    assert again[2] is first[2], "every stream of the tick sends the same encoded event"
    assert renders.renders == 1


def test_the_hook_knows_which_sagas_this_engine_drives() -> None:
    live = LiveUpdates()
    for saga_id in ("done", "left", "parked"):
        live.after_claim(SimpleNamespace(id=saga_id), ClaimReason.STARTED)  # type: ignore[arg-type]
    assert live.driving == {"done", "left", "parked"}
    live.on_finish(SimpleNamespace(id="done"))  # type: ignore[arg-type]
    live.on_release(SimpleNamespace(id="left"), "lease lost")  # type: ignore[arg-type]
    live.on_park(SimpleNamespace(id="parked"), "signal:approve")  # type: ignore[arg-type]
    assert live.driving == set()


@pytest.mark.parametrize(
    "at",
    [
        0.0,
        1.5,
        1764150000.0,
        1764150000.123456,
        1764150000.9999995,
        1764150000.0004999,
        1764150000.0015,
        1e9 + 0.9999996,
        1764150059.9996,
        -1.25,
    ],
)
def test_when_prints_what_datetime_prints(at: float) -> None:
    expected = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    assert _when(at) == expected
    assert _when(None) == ""
