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
  a 415: a cross-site form cannot trigger them). Without JavaScript the pages render but are not
  live, and the buttons need it.

``retry``/``cancel`` (``async (request, saga_id)``) replace the engine's own actions when an
application must do more (the checkout reopens the order it mirrors). An inbox of sagas waiting
for a person is not shown: the engine cannot park a saga yet.
"""

# No "from __future__ import annotations": FastAPI must see the local EngineDep alias itself.

import asyncio
import contextlib
import json
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
from sagaway.errors import InvalidTransition, SagaNotFound, SagawayError, UnknownSagaError
from sagaway.state import Phase, SagaRecord, SagaStatus, StepRecord, StepStatus
from sagaway.web.live import LiveUpdates

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
LIST_REFRESH_SECONDS = 1.0  # a list page re-renders at most this often while sagas change


def templates_environment(*extra: PackageLoader) -> Environment:
    """The Jinja2 environment of these pages; ``extra`` loaders come first, so an application's
    templates can extend ``sagaway/base.html`` (as the checkout's shop page does)."""
    from jinja2 import ChoiceLoader

    env = Environment(
        loader=ChoiceLoader([*extra, PackageLoader("sagaway.web", "templates")]),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    return env


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


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
    lives: dict[int, LiveUpdates] = {}

    def get_engine(request: Request) -> Engine:
        return engine if isinstance(engine, Engine) else engine(request)

    def live_of(eng: Engine) -> LiveUpdates:
        """One LiveUpdates hook per engine, added on the first page that needs it."""
        live = lives.get(id(eng))
        if live is None:
            for hook in eng.hooks:
                if isinstance(hook, LiveUpdates):
                    live = hook
                    break
            else:
                live = LiveUpdates()
                eng.add_hook(live)
            lives[id(eng)] = live
        return live

    EngineDep = Annotated[Engine, Depends(get_engine)]

    def render(template: str, **context: Any) -> HTMLResponse:
        page = env.get_template(template).render(base=prefix, title=title, links=links, **context)
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

    @router.get("/sagas", response_class=HTMLResponse)
    async def saga_list(
        request: Request,
        eng: EngineDep,
        status: Annotated[str, Query()] = "",
        name: Annotated[str, Query(max_length=200)] = "",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
        fragment: bool = False,
    ) -> HTMLResponse:
        chosen = None
        if status:
            try:
                chosen = SagaStatus(status.upper())
            except ValueError:
                raise HTTPException(
                    422, f"status must be one of {', '.join(SagaStatus)}, not {status!r}"
                ) from None
        page = await eng.list_sagas(status=chosen, name=name or None, limit=limit, offset=offset)

        def link(at: int) -> str:
            query = {"status": status, "name": name, "offset": at, "limit": limit}
            return f"{prefix}/sagas?" + urlencode({k: v for k, v in query.items() if v})

        context = {
            "page": page,
            "status": chosen.value if chosen else "",
            "name": name,
            "statuses": list(SagaStatus),
            "offset": offset,
            "limit": limit,
            "previous": link(max(offset - limit, 0)) if offset > 0 else None,
            "next": link(offset + limit) if offset + limit < page.total else None,
            "stream": f"{prefix}/sagas/events?" + urlencode({"status": status, "name": name}),
            "fragment_url": str(request.url.include_query_params(fragment="true")),
        }
        return render("sagaway/_saga_rows.html" if fragment else "sagaway/sagas.html", **context)

    @router.get("/sagas/events")
    async def list_events(eng: EngineDep) -> StreamingResponse:
        """``changed`` whenever sagas changed (at most once per LIST_REFRESH_SECONDS)."""
        live = live_of(eng) if eng.execute else None

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            seen = -1 if live is None else live.version
            last_poll = time.monotonic()
            while True:
                await asyncio.sleep(LIST_REFRESH_SECONDS)
                if live is not None and live.version != seen:
                    seen = live.version
                    yield f"event: changed\ndata: {seen}\n\n"
                elif time.monotonic() - last_poll >= max(poll_seconds, LIST_REFRESH_SECONDS):
                    # Sagas run elsewhere (or nothing changed here): a cheap keep-alive that
                    # also makes the page re-read, at the poll rate.
                    last_poll = time.monotonic()
                    yield "event: changed\ndata: poll\n\n" if live is None else ": idle\n\n"

        return _sse(stream())

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
    async def saga_events(saga_id: str, eng: EngineDep) -> StreamingResponse:
        """The saga's timeline, re-rendered (event ``timeline``) after each change; ``end``
        once it is terminal."""
        await load(eng, saga_id)
        live = live_of(eng)

        async def stream() -> AsyncIterator[str]:
            woken = live.watch(saga_id)
            last = ""
            try:
                yield "retry: 2000\n\n"
                while True:
                    record = await eng.get(saga_id)
                    html = env.get_template("sagaway/_timeline.html").render(
                        base=prefix, **saga_context(eng, record)
                    )
                    if html != last:
                        last = html
                        yield _event("timeline", html)
                    if record.status.is_terminal:
                        yield _event("end", record.status.value)
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), poll_seconds)
                    woken.clear()
            finally:
                live.unwatch(saga_id, woken)

        return _sse(stream())

    async def act(
        request: Request,
        eng: Engine,
        saga_id: str,
        action: SagaAction | None,
        default: Callable[[Engine, str], Awaitable[object]],
        done: str,
    ) -> Response:
        # Only requests that say their body is JSON: a cross-site HTML form cannot, so another
        # page the operator visits cannot retry or cancel sagas behind their back (CSRF).
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, "Send this request with 'Content-Type: application/json'")
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

    return router


def _json(status: int, detail: str) -> Response:
    return Response(json.dumps({"detail": detail}), status, media_type="application/json")


def _event(name: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\n{lines}\n"


def _sse(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
