"""The saga views as a FastAPI router: mount them over your own engine.

::

    from sagaway.web import saga_ui_router
    app.include_router(saga_ui_router(engine))            # pages under /ui
    app.include_router(saga_ui_router(lambda request: request.app.state.engine))

Pages (server-rendered Jinja2, a small script, no CDN, no build step; every asset is served by
this router under ``{prefix}/static/``):

* ``{prefix}/sagas``: the saga list, newest first, filtered by status and name, paged; it
  refreshes itself while open (Server-Sent Events).
* ``{prefix}/sagas/{id}``: one saga. Its timeline has a lane of forward steps and a lane of
  compensations, each step with its status, attempts, duration, error and idempotency key, then
  the history. It follows the saga live over ``{prefix}/sagas/{id}/events``; retry (FAILED) and
  cancel (running) buttons post JSON to ``{prefix}/sagas/{id}/retry|cancel`` (anything else is
  a 415: a cross-site form cannot trigger them); ``POST`` (JSON) / ``DELETE``
  ``{prefix}/sagas/{id}/pin`` pin and unpin it (retention keeps a pinned saga). Without
  JavaScript the pages render but are not live, and the buttons need it.
* ``{prefix}/inbox``: the sagas parked until something arrives (a participant's reply, a
  person's signal), soonest deadline first, each with what it waits for and its deadline
  counting down; live like the list; a "Send {signal}" button on those waiting for a signal
  (no payload). ``{prefix}/waiting.json?for=signal:NAME`` lists them as
  JSON, and ``POST {prefix}/sagas/{id}/signals/{name}`` (JSON body ``{"payload", "signal_id",
  "error"}``) delivers a signal (see docs/waits.md).

``retry``/``cancel`` (``async (request, saga_id)``) replace the engine's own actions when an
application must do more (the checkout reopens the order it mirrors).
"""

# No "from __future__ import annotations": FastAPI must see the local EngineDep alias itself.

import asyncio
import contextlib
import functools
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from sagaway.engine import Engine
from sagaway.errors import (
    InvalidInput,
    InvalidTransition,
    SagaNotFound,
    SagawayError,
    UnknownSagaError,
    UnstorableValue,
)
from sagaway.retention import pruning_store
from sagaway.state import Phase, SagaRecord, SagaStatus, StepRecord, StepStatus
from sagaway.web.live import COALESCE_SECONDS, SSE_HEADERS, LiveUpdates, event_stream, sse_event

__all__ = [
    "EngineSource",
    "SagaAction",
    "StepView",
    "saga_ui_router",
    "templates_environment",
    "timeline",
]

EngineSource = Engine | Callable[[Request], Engine]
SagaAction = Callable[[Request, str], Awaitable[object]]

STATIC_FILES = {"sagaway.css": "text/css", "sagaway.js": "text/javascript"}
PAGE_SIZE = 25
# The inbox's filter: prefixes of ``waiting_for`` (the engine parks a remote step's saga on
# "reply:<topic>"; a saga waiting for a person's signal on "signal:<name>").
WAITING_KINDS = (
    ("", "anything"),
    ("signal:", "a person (signal)"),
    ("reply:", "a reply"),
    ("timer", "a timer"),
)


def templates_environment(*extra: PackageLoader) -> Environment:
    """The Jinja2 environment of these pages; ``extra`` loaders come first, so an application's
    templates can extend ``sagaway/base.html`` (as the checkout's shop page does)."""
    from jinja2 import ChoiceLoader

    env = Environment(
        loader=ChoiceLoader([*extra, PackageLoader("sagaway.web", "templates")]),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        # Package files do not change while the app runs: no stat of every template (and of
        # every template it includes) on every render.
        auto_reload=False,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["left"] = _left
    env.filters["waiting"] = _waiting
    env.filters["signal_name"] = _signal_name
    return env


def _when(at: float | None) -> str:
    """``at`` (epoch seconds) as UTC to the millisecond, as ``datetime`` would print it."""
    if at is None:
        return ""
    # A timeline or a list prints dozens of these per render, most within the same second:
    # the date and time of day are formatted once per second (``_second``), not per call.
    # The microseconds are rounded half-even as datetime.fromtimestamp rounds them.
    frac, whole = math.modf(at)
    seconds, micros = int(whole), round(frac * 1e6)
    if micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _left(until: float | None, now: float) -> str:
    """Time left until ``until`` (the page's script keeps it counting down)."""
    if until is None:
        return ""
    left = int(until - now)
    text = _span(abs(left))
    return f"{text} overdue" if left < 0 else text


def _span(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _signal_name(waiting_for: str | None) -> str:
    """The signal a saga waits for ("signal:approve" -> "approve"), else ""."""
    kind, _, name = (waiting_for or "").partition(":")
    return name if kind == "signal" else ""


def _waiting(waiting_for: str | None) -> str:
    """``reply:payment.start`` -> "reply to payment.start"; ``signal:approve`` -> "signal
    approve"; anything else as it is."""
    if not waiting_for:
        return ""
    kind, _, what = waiting_for.partition(":")
    if kind == "reply" and what:
        return f"reply to {what}"
    if kind == "signal" and what:
        return f"signal {what}"
    return waiting_for


@dataclass(frozen=True, slots=True)
class StepView:
    """One card of the timeline."""

    name: str
    phase: Phase
    status: StepStatus
    attempts: int
    error: str | None
    uncertain: bool
    started_at: float | None
    finished_at: float | None
    idempotency_key: str

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(self.finished_at - self.started_at, 0.0)


def _step_names(engine: Engine, record: SagaRecord) -> list[str]:
    """Every step in definition order when the engine knows the saga, else as recorded."""
    names: list[str] = []
    with contextlib.suppress(UnknownSagaError):
        names = [step.name for step in engine.definition(record.name, record.version).steps]
    names += [name for name, _ in record.steps if name not in names]
    return names


def timeline(engine: Engine, record: SagaRecord) -> tuple[list[StepView], list[StepView | None]]:
    """The two lanes: every forward step (unreached ones PENDING, SKIPPED once the saga ended),
    and under each the compensation it had, if any."""
    unreached = StepStatus.SKIPPED if record.status.is_terminal else StepStatus.PENDING
    forward: list[StepView] = []
    undo: list[StepView | None] = []
    for name in _step_names(engine, record):
        row = record.steps.get((name, Phase.FORWARD)) or StepRecord(name, Phase.FORWARD, unreached)
        forward.append(_view(record.id, row))
        back = record.steps.get((name, Phase.COMPENSATION))
        undo.append(None if back is None else _view(record.id, back))
    return forward, undo


def _view(saga_id: str, row: StepRecord) -> StepView:
    return StepView(
        row.name,
        row.phase,
        row.status,
        row.attempts,
        row.error,
        row.uncertain,
        row.started_at,
        row.finished_at,
        f"{saga_id}:{row.name}:{row.phase}",
    )


def saga_ui_router(
    engine: EngineSource,
    *,
    prefix: str = "/ui",
    title: str = "Sagaway",
    retry: SagaAction | None = None,
    cancel: SagaAction | None = None,
    poll_seconds: float = 1.0,
    links: Sequence[tuple[str, str]] = (),
) -> APIRouter:
    """The saga list and saga pages over ``engine`` (an Engine, or a function of the request
    returning one), under ``prefix``; ``links`` (label, URL) go in the pages' navigation bar.
    See the module docstring."""
    router = APIRouter(prefix=prefix, include_in_schema=False)
    env = templates_environment()

    async def get_engine(request: Request) -> Engine:
        # async: FastAPI runs a plain ``def`` dependency on a worker thread, a thread hop per
        # request (a third of what a saga page's event stream cost the server).
        return engine if isinstance(engine, Engine) else engine(request)

    EngineDep = Annotated[Engine, Depends(get_engine)]

    # The saga views' own links, after the application's unless it placed them itself.
    nav = [*links]
    for label, url in (("Sagas", f"{prefix}/sagas"), ("Inbox", f"{prefix}/inbox")):
        if all(url != there for _, there in nav):
            nav.append((label, url))

    def render(template: str, *, current: str = f"{prefix}/sagas", **context: Any) -> HTMLResponse:
        page = env.get_template(template).render(
            base=prefix, title=title, links=nav, current=current, **context
        )
        return HTMLResponse(page)

    async def load(eng: Engine, saga_id: str) -> SagaRecord:
        try:
            return await eng.get(saga_id)
        except SagaNotFound:
            raise HTTPException(404, f"no saga {saga_id}") from None

    def saga_context(eng: Engine, record: SagaRecord) -> dict[str, Any]:
        forward, undo = timeline(eng, record)
        return {
            "saga": record,
            "forward": forward,
            "undo": undo,
            "compensated": any(u is not None for u in undo),
            "can_retry": record.status is SagaStatus.FAILED,
            "can_cancel": record.status.is_active,
            "live": not record.status.is_terminal,
        }

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        media = STATIC_FILES.get(name)
        if media is None:
            raise HTTPException(404, f"no static file {name}")
        body = resources.files("sagaway.web").joinpath("static", name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "max-age=300"})

    def parse_status(status: str) -> SagaStatus | None:
        if not status:
            return None
        try:
            return SagaStatus(status.upper())
        except ValueError:
            raise HTTPException(
                422, f"status must be one of {', '.join(SagaStatus)}, not {status!r}"
            ) from None

    async def list_context(
        eng: Engine, chosen: SagaStatus | None, status: str, name: str, offset: int, limit: int
    ) -> dict[str, Any]:
        page = await eng.list_sagas(status=chosen, name=name or None, limit=limit, offset=offset)

        def link(at: int) -> str:
            query = {"status": status, "name": name, "offset": at, "limit": limit}
            return f"{prefix}/sagas?" + urlencode({k: v for k, v in query.items() if v})

        return {
            "page": page,
            "offset": offset,
            "limit": limit,
            "previous": link(max(offset - limit, 0)) if offset > 0 else None,
            "next": link(offset + limit) if offset + limit < page.total else None,
        }

    @router.get("/sagas", response_class=HTMLResponse)
    async def saga_list(
        eng: EngineDep,
        status: Annotated[str, Query()] = "",
        name: Annotated[str, Query(max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
        fragment: bool = False,
    ) -> HTMLResponse:
        chosen = parse_status(status)
        query = {"status": status, "name": name, "offset": offset, "limit": limit}
        context = {
            **await list_context(eng, chosen, status, name, offset, limit),
            "status": chosen.value if chosen else "",
            "name": name,
            "statuses": list(SagaStatus),
            "stream": f"{prefix}/sagas/events?" + urlencode({k: v for k, v in query.items() if v}),
        }
        return render("sagaway/_saga_rows.html" if fragment else "sagaway/sagas.html", **context)

    @router.get("/sagas/events")
    async def list_events(
        eng: EngineDep,
        status: Annotated[str, Query()] = "",
        name: Annotated[str, Query(max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
    ) -> StreamingResponse:
        """Event ``saga-rows``: the list's rows as HTML, now and after sagas changed (at most
        once per tick, rendered once for every page showing the same filters)."""
        chosen = parse_status(status)
        live = LiveUpdates.of(eng)

        async def rows() -> str:
            context = await list_context(eng, chosen, status, name, offset, limit)
            return env.get_template("sagaway/_saga_rows.html").render(base=prefix, **context)

        key = ("saga-rows", prefix, chosen, name, offset, limit)
        return event_stream(live.fragments([("saga-rows", key, rows)], poll_seconds=poll_seconds))

    async def inbox_context(eng: Engine, waiting: str, offset: int, limit: int) -> dict[str, Any]:
        page = await eng.store.list_waiting(prefix=waiting, limit=limit, offset=offset)

        def link(at: int) -> str:
            query = {"waiting": waiting, "offset": at, "limit": limit}
            return f"{prefix}/inbox?" + urlencode({k: v for k, v in query.items() if v})

        return {
            "page": page,
            "now": time.time(),
            "previous": link(max(offset - limit, 0)) if offset > 0 else None,
            "next": link(offset + limit) if offset + limit < page.total else None,
        }

    @router.get("/inbox", response_class=HTMLResponse)
    async def inbox(
        eng: EngineDep,
        waiting: Annotated[str, Query(max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
    ) -> HTMLResponse:
        """Sagas parked until something arrives, soonest deadline first."""
        query = {"waiting": waiting, "offset": offset, "limit": limit}
        kinds = list(WAITING_KINDS)
        if waiting not in dict(kinds):
            kinds.append((waiting, waiting))
        return render(
            "sagaway/inbox.html",
            current=f"{prefix}/inbox",
            **await inbox_context(eng, waiting, offset, limit),
            waiting=waiting,
            kinds=kinds,
            stream=f"{prefix}/inbox/events?" + urlencode({k: v for k, v in query.items() if v}),
        )

    @router.get("/inbox/events")
    async def inbox_events(
        eng: EngineDep,
        waiting: Annotated[str, Query(max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
    ) -> StreamingResponse:
        """Event ``inbox-rows``: the inbox's rows, now and after sagas changed."""
        live = LiveUpdates.of(eng)

        async def rows() -> str:
            context = await inbox_context(eng, waiting, offset, limit)
            return env.get_template("sagaway/_inbox_rows.html").render(base=prefix, **context)

        key = ("inbox-rows", prefix, waiting, offset, limit)
        return event_stream(live.fragments([("inbox-rows", key, rows)], poll_seconds=poll_seconds))

    @router.get("/sagas/{saga_id}", response_class=HTMLResponse)
    async def saga_page(
        saga_id: str, eng: EngineDep, notice: str = "", error: str = ""
    ) -> HTMLResponse:
        record = await load(eng, saga_id)
        return render(
            "sagaway/saga.html",
            **saga_context(eng, record),
            notice=notice,
            error=error,
            stream=f"{prefix}/sagas/{quote(saga_id)}/events",
        )

    @router.get("/sagas/{saga_id}/events")
    async def saga_events(saga_id: str, eng: EngineDep) -> Response:
        """The saga's timeline (event ``timeline``) now and after each burst of changes,
        rendered once for every page following the saga; ``end`` once it is terminal."""
        live = LiveUpdates.of(eng)

        async def timeline_html() -> tuple[str, str]:
            record = await eng.get(saga_id)
            html = env.get_template("sagaway/_timeline.html").render(
                base=prefix, **saga_context(eng, record)
            )
            return html, record.status.value if record.status.is_terminal else ""

        # A saga this engine drives exists and runs: no store read to say so. Otherwise read it
        # without its history: whether it exists (404) and still runs.
        running = saga_id in live.driving
        if not running:
            try:
                running = not (await eng.store.get(saga_id, history=False)).status.is_terminal
            except SagaNotFound:
                raise HTTPException(404, f"no saga {saga_id}") from None
        if not running:
            # Finished: the whole stream is known now, one plain response (no streaming task,
            # no watch); the page's script closes the source on "end", so it does not reconnect.
            html, terminal = await timeline_html()
            if terminal:
                body = "retry: 2000\n\n" + sse_event("timeline", html) + sse_event("end", terminal)
                return Response(body, media_type="text/event-stream", headers=SSE_HEADERS)

        async def stream() -> AsyncIterator[str]:
            watch = live.follow(saga_id)
            last = ""
            try:
                yield "retry: 2000\n\n"
                # The page shows the saga as it was a moment ago. A running saga's next steps
                # come in a burst (often all of them): wait for it before the first render.
                if running and await watch.wait(watch.count, COALESCE_SECONDS):
                    await asyncio.sleep(COALESCE_SECONDS)
                while True:
                    count = watch.count
                    html, terminal = await watch.render(count, timeline_html)
                    if html != last:
                        last = html
                        yield sse_event("timeline", html)
                    if terminal:
                        yield sse_event("end", terminal)
                        return
                    if await watch.wait(count, poll_seconds):
                        # A saga's transitions come in bursts: one render for the burst.
                        await asyncio.sleep(COALESCE_SECONDS)
                    elif watch.count == count:
                        # No wake-up: the saga may run in another process. Read it again
                        # (once for every page following it).
                        watch.count += 1
            finally:
                live.unfollow(saga_id, watch)

        return event_stream(stream())

    async def act(
        request: Request,
        eng: Engine,
        saga_id: str,
        action: SagaAction | None,
        default: Callable[[Engine, str], Awaitable[object]],
        done: str,
    ) -> Response:
        _require_json(request)
        try:
            await (action(request, saga_id) if action is not None else default(eng, saga_id))
        except SagaNotFound:
            raise HTTPException(404, f"no saga {saga_id}") from None
        except InvalidTransition as exc:
            return _json(409, str(exc))
        except SagawayError as exc:
            return _json(503, str(exc))
        return _json(202, done)

    @router.post("/sagas/{saga_id}/retry")
    async def retry_saga(saga_id: str, request: Request, eng: EngineDep) -> Response:
        return await act(request, eng, saga_id, retry, Engine.retry, "retry started")

    @router.post("/sagas/{saga_id}/cancel")
    async def cancel_saga(saga_id: str, request: Request, eng: EngineDep) -> Response:
        return await act(request, eng, saga_id, cancel, Engine.cancel, "cancel requested")

    async def set_pinned(saga_id: str, eng: Engine, pinned: bool) -> Response:
        try:
            record = await pruning_store(eng.store).set_pinned(saga_id, pinned)
        except SagaNotFound:
            return _json(404, f"no saga {saga_id}")
        except SagawayError as exc:
            return _json(503, str(exc))
        body = {"id": record.id, "status": record.status.value, "pinned": record.pinned}
        return Response(json.dumps(body), media_type="application/json")

    @router.post("/sagas/{saga_id}/pin")
    async def pin_saga(saga_id: str, request: Request, eng: EngineDep) -> Response:
        """Retention never removes a pinned saga; 200 with ``{"id", "status", "pinned"}``."""
        _require_json(request)
        return await set_pinned(saga_id, eng, True)

    @router.delete("/sagas/{saga_id}/pin")
    async def unpin_saga(saga_id: str, eng: EngineDep) -> Response:
        """Unpin (a DELETE: no cross-site form can send one); the same answer as the pin."""
        return await set_pinned(saga_id, eng, False)

    # Signals (the waits lane's minimal addition): deliver one, list who waits for one.
    @router.post("/sagas/{saga_id}/signals/{name}")
    async def signal_saga(saga_id: str, name: str, request: Request, eng: EngineDep) -> Response:
        """Body ``{"payload": ..., "signal_id": "...", "error": "..."}`` (all optional):
        202 with the receipt (``duplicate`` true if that signal id was already delivered);
        404 unknown saga, 409 not waiting for it (says what it waits for), 422 bad body."""
        _require_json(request)
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return _json(422, f"the body is not JSON: {exc}")
        if not isinstance(body, dict) or set(body) - {"payload", "signal_id", "error"}:
            return _json(422, 'the body is {"payload": ..., "signal_id": "...", "error": "..."}')
        signal_id, error = body.get("signal_id"), body.get("error")
        if not isinstance(signal_id, str | None) or not isinstance(error, str | None):
            return _json(422, "signal_id and error are strings")
        try:
            receipt = await eng.signal(
                saga_id, name, body.get("payload"), signal_id=signal_id, error=error
            )
        except SagaNotFound:
            return _json(404, f"no saga {saga_id}")
        except InvalidTransition as exc:
            return _json(409, str(exc))
        except (InvalidInput, UnstorableValue) as exc:
            return _json(422, str(exc))
        except SagawayError as exc:
            return _json(503, str(exc))
        return Response(
            json.dumps(
                {
                    "saga_id": receipt.saga_id,
                    "name": receipt.name,
                    "signal_id": receipt.signal_id,
                    "duplicate": receipt.duplicate,
                }
            ),
            202,
            media_type="application/json",
        )

    @router.get("/waiting.json")
    async def waiting_json(
        eng: EngineDep,
        waiting: Annotated[str, Query(alias="for", max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
    ) -> Response:
        """Parked sagas whose ``waiting_for`` starts with ``for`` ("signal:payment_confirmed",
        "timer", "reply:"), soonest due first, as JSON."""
        page = await eng.list_waiting(waiting, limit=limit, offset=offset)
        items = [
            {
                "id": saga.id,
                "name": saga.name,
                "version": saga.version,
                "status": saga.status.value,
                "waiting_for": saga.waiting_for,
                "parked_until": saga.parked_until,
            }
            for saga in page.items
        ]
        return Response(
            json.dumps({"total": page.total, "offset": offset, "sagas": items}),
            media_type="application/json",
        )

    return router


def _require_json(request: Request) -> None:
    """Only requests that say their body is JSON change a saga: a cross-site HTML form cannot
    send one, so another page the operator visits cannot act on sagas behind their back (CSRF)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "Send this request with 'Content-Type: application/json'")


def _json(status: int, detail: str) -> Response:
    return Response(json.dumps({"detail": detail}), status, media_type="application/json")
