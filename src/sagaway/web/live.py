"""Live updates for the web UI: an engine hook, and event streams whose cost does not grow with
the number of open pages.

The hook (:class:`LiveUpdates`, one per engine: :meth:`LiveUpdates.of`) counts every durable
transition (``version``) and wakes the pages following a saga. Two kinds of stream use it:

* **Fragment streams** (the saga list, the shop's orders and stock): every stream wakes on the
  same clock ticks (``LIST_REFRESH_SECONDS`` apart, aligned on the loop's clock) and, when the
  version moved, sends the new HTML of its fragments in the event itself. A fragment is
  rendered once per tick and shared by every stream that sends it (:class:`SharedRenders`), so
  50 open pages cost one render a second, not 50 renders and 50 requests.
* **Saga streams**: the pages following one saga share one :class:`Watch`; a transition wakes
  them, they wait ``COALESCE_SECONDS`` (a saga's steps come in bursts) and send one timeline
  rendered once for all of them.

Sagas driven by another process (workers, or every saga of an API-only server) never reach
this hook: the streams also re-read every ``poll_seconds`` (a fragment: once per tick for all
its streams), and send only what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from fastapi.responses import StreamingResponse

from sagaway.hooks import ClaimReason, Hook
from sagaway.state import Change, SagaRecord

if TYPE_CHECKING:
    from sagaway.engine import Engine

__all__ = [
    "COALESCE_SECONDS",
    "LIST_REFRESH_SECONDS",
    "SSE_HEADERS",
    "Fragment",
    "LiveUpdates",
    "SharedRenders",
    "Watch",
    "event_stream",
    "sse_event",
]

log = logging.getLogger("sagaway.web")

LIST_REFRESH_SECONDS = 1.0  # a fragment stream sends at most once per tick of this length
COALESCE_SECONDS = 0.1  # a saga stream waits this long after a wake-up for the next steps
KEEPALIVE_SECONDS = 15.0  # a comment on a quiet stream, so proxies keep it open

# (event name, cache key, render): the page replaces the element whose id is the event name.
Fragment = tuple[str, Hashable, Callable[[], Awaitable[str]]]


class SharedRenders:
    """Each fragment rendered at most once per tick, whoever asks for it.

    The first stream asking for ``key`` in a tick starts the render (a task of its own, so a
    page closing while it runs does not cancel it for the others); the others await the same
    task, unless it began at a lower transition count than the caller asks for: a saga moved
    on since, and that render would put older numbers on a page than it may hold already (a
    page opened after that transition, or one that re-read the fragment after placing an
    order) until the next tick. Such a caller starts a render of its own, which the later
    callers of the tick then share. Holds the last ``max_entries`` keys (the keys of a list
    include its filters, which come from the URL: the cache stays bounded whatever pages ask
    for)."""

    def __init__(self, max_entries: int = 256) -> None:
        # key -> (tick, the transition count when the render began, the render)
        self._entries: dict[Hashable, tuple[int, int, asyncio.Task[tuple[int, str, str]]]] = {}
        self._max = max_entries
        self.renders = 0  # how many renders ran (tests and benchmarks read it)

    async def get(
        self,
        key: Hashable,
        tick: int,
        version: int,
        render: Callable[[], Awaitable[str]],
        name: str = "",
    ) -> tuple[int, str, str]:
        """``(version, html, event)``: the fragment as rendered in ``tick`` at transition count
        ``version`` or later, and that HTML as the Server-Sent Event ``name`` (encoded once for
        every stream too); the ``version`` returned is the count when that render began (what
        the page now shows at least). A key is one fragment: always asked with the same name."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != tick or entry[1] < version:
            task = asyncio.ensure_future(self._render(version, render, name))
            self._entries.pop(key, None)
            entry = self._entries[key] = (tick, version, task)
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]
        return await asyncio.shield(entry[2])

    async def _render(
        self, version: int, render: Callable[[], Awaitable[str]], name: str
    ) -> tuple[int, str, str]:
        self.renders += 1
        html = await render()
        return version, html, sse_event(name, html)


class Watch:
    """The pages following one saga: ``count`` transitions seen, ``changed`` set (and replaced)
    at each one, and the last timeline rendered for them (``rendered``: count and task)."""

    __slots__ = ("changed", "count", "followers", "rendered")

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        self.count = 0
        self.followers = 0
        self.rendered: tuple[int, asyncio.Task[tuple[str, str]]] | None = None

    async def wait(self, seen: int, timeout: float) -> bool:
        """Until ``count`` moves past ``seen`` (True) or ``timeout`` passes (False)."""
        if self.count != seen:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def render(
        self, count: int, render: Callable[[], Awaitable[tuple[str, str]]]
    ) -> tuple[str, str]:
        """The timeline for ``count`` (html, and the status once terminal, else ""), rendered
        once for every follower."""
        done = self.rendered
        if (
            done is None
            or done[0] != count
            or (done[1].done() and not done[1].cancelled() and done[1].exception() is not None)
        ):  # a failed render (the store was down) is not kept: the next page tries again
            done = self.rendered = (count, asyncio.ensure_future(render()))
        return await asyncio.shield(done[1])


class LiveUpdates(Hook):
    """Counts transitions (``version``) and wakes the pages following a saga (``follow``);
    ``driving``: the sagas this engine drives now (claimed since the hook was added, not yet
    finished, released or parked), which a page can follow without reading the store first."""

    def __init__(self) -> None:
        self._watches: dict[str, Watch] = {}
        self.version = 0
        self.renders = SharedRenders()
        self.driving: set[str] = set()

    @classmethod
    def of(cls, engine: Engine) -> LiveUpdates:
        """The engine's LiveUpdates hook, added on first use."""
        for hook in engine.hooks:
            if isinstance(hook, LiveUpdates):
                return hook
        live = cls()
        engine.add_hook(live)
        return live

    def follow(self, saga_id: str) -> Watch:
        watch = self._watches.get(saga_id)
        if watch is None:
            watch = self._watches[saga_id] = Watch()
        watch.followers += 1
        return watch

    def unfollow(self, saga_id: str, watch: Watch) -> None:
        watch.followers -= 1
        if watch.followers <= 0 and self._watches.get(saga_id) is watch:
            del self._watches[saga_id]

    def _wake(self, saga_id: str) -> None:
        self.version += 1
        watch = self._watches.get(saga_id)
        if watch is not None:
            watch.count += 1
            watch.changed.set()
            watch.changed = asyncio.Event()

    def saga_started(self, record: SagaRecord) -> None:
        self._wake(record.id)

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        self.driving.add(record.id)
        self._wake(record.id)

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        self._wake(record.id)

    def on_finish(self, record: SagaRecord) -> None:
        self.driving.discard(record.id)

    def on_release(self, record: SagaRecord, reason: str) -> None:
        self.driving.discard(record.id)

    def on_park(self, record: SagaRecord, reason: str) -> None:
        self.driving.discard(record.id)

    async def fragments(
        self,
        fragments: Sequence[Fragment],
        *,
        poll_seconds: float = 1.0,
        period: float = LIST_REFRESH_SECONDS,
    ) -> AsyncIterator[str]:
        """A Server-Sent Events body: each fragment now, then again when it changed, checked on
        the first tick after a transition and every ``poll_seconds`` (for sagas that other
        processes drive), as events named after the fragments. A render is shared with every
        other stream in the same tick (``period`` seconds of the loop's clock, the same ticks
        for every stream)."""
        loop = asyncio.get_running_loop()
        yield "retry: 2000\n\n"
        seen: int | None = None
        sent: dict[str, str] = {}
        last_sent = last_poll = loop.time()
        tick = int(loop.time() // period)
        while True:
            now = loop.time()
            # Another process's engine may drive sagas of the same store (workers): re-read
            # every poll_seconds even when this engine's version did not move.
            if seen is None or self.version != seen or now - last_poll >= poll_seconds:
                last_poll = now
                shown = version = self.version
                try:
                    for name, key, render in fragments:
                        rendered, html, event = await self.renders.get(
                            key, tick, version, render, name
                        )
                        shown = min(shown, rendered)
                        if sent.get(name) != html:
                            sent[name] = html
                            last_sent = now
                            yield event
                except Exception:  # the store is down, say: the page keeps what it shows
                    log.warning("live fragment failed", exc_info=True)
                else:
                    seen = shown
            if now - last_sent >= KEEPALIVE_SECONDS:
                last_sent = now
                yield ": keep-alive\n\n"
            tick = int(loop.time() // period) + 1
            await asyncio.sleep(tick * period - loop.time())


def sse_event(name: str, data: str) -> str:
    """One Server-Sent Event: ``data`` may span lines."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\n{lines}\n"


SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffers or caches


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` response that no proxy buffers or caches."""
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
