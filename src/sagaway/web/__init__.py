"""The web UI of sagaway: saga list and saga pages (a live timeline with forward and
compensation lanes, retry and cancel) as a FastAPI router over any engine.

Needs the ``web`` extra (FastAPI, Jinja2). See :func:`saga_ui_router`.
"""

from sagaway.web.live import LiveUpdates, SharedRenders, event_stream, sse_event
from sagaway.web.router import (
    EngineSource,
    SagaAction,
    StepView,
    saga_ui_router,
    templates_environment,
    timeline,
)

__all__ = [
    "EngineSource",
    "LiveUpdates",
    "SagaAction",
    "SharedRenders",
    "StepView",
    "event_stream",
    "saga_ui_router",
    "sse_event",
    "templates_environment",
    "timeline",
]
