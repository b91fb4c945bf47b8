"""Saga log lines as an engine hook, and a text / JSON-lines formatter for them.

``LoggingHook`` writes one line (logger ``sagaway.sagas``) per saga start, step retry, step
failure, start of compensation, operator retry, takeover and finish, each carrying ``saga_id``,
``saga`` (its name) and, through ``fields``, whatever the application adds (the checkout adds
``order_id``). A parked saga taken on by its reply or signal is logged at DEBUG only. Levels:
starts, finishes and business failures are INFO (normal life), retries of a step WARNING, a saga
that ends FAILED (an operator must act) ERROR.

``configure_logging("json")`` makes every log record of the process one JSON object per line
(``ts``, ``level``, ``logger``, ``message`` and the record's extra fields); ``"text"`` is the
readable form, extra fields appended as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from sagaway.context import StepContext
from sagaway.hooks import ClaimReason, Hook, StepOutcome
from sagaway.state import Change, Phase, SagaRecord, SagaStatus

__all__ = ["JsonFormatter", "LoggingHook", "TextFormatter", "configure_logging"]

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has: anything else on a record is an ``extra`` field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


_second: list[Any] = [None, ""]  # (whole second, its formatted prefix): strftime is slow


def _timestamp(created: float) -> str:
    """``2026-01-01T10:00:00.123Z`` (UTC, milliseconds), formatting each second only once."""
    whole = int(created)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class TextFormatter(logging.Formatter):
    """``2026-01-01T10:00:00.123Z INFO sagaway.sagas: saga started saga_id=... order_id=...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        )
        # The extras in one pass, without a dict of them and a generator over it (two saga
        # lines an order: ~0.5 us a line).
        for key, value in record.__dict__.items():
            if value is not None and key not in _STANDARD:
                line = f"{line} {key}={_text(value)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    fmt: LogFormat | str = "text", level: int | str = logging.INFO, *, stream: Any = None
) -> logging.Handler:
    """Send every log record of the process (root logger) to ``stream`` (stderr) in ``fmt``.
    Replaces the root logger's handlers; returns the new one."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


class LoggingHook(Hook):
    """The saga lines (see the module docstring). ``fields(record)`` adds fields to each line
    (return None values to leave them out)."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        fields: Callable[[SagaRecord], Mapping[str, Any]] | None = None,
    ) -> None:
        self.log = logger or logging.getLogger("sagaway.sagas")
        self._fields = fields

    def _extra(self, record: SagaRecord, **more: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"saga_id": record.id, "saga": record.name}
        if self._fields is not None:
            extra.update(self._fields(record))
        extra.update(more)
        return extra

    def saga_started(self, record: SagaRecord) -> None:
        if self.log.isEnabledFor(logging.INFO):
            self.log.info("saga started", extra=self._extra(record))

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        if reason is ClaimReason.STARTED:
            return
        # A reply or a signal taking its parked saga on is the normal end of a step, not a
        # takeover: DEBUG (at INFO it was a line per remote step, ~3% of a gateway's CPU).
        level = logging.DEBUG if reason is ClaimReason.REPLIED else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        what = "saga retried by an operator" if reason is ClaimReason.RETRIED else "saga resumed"
        self.log.log(level, what, extra=self._extra(record, status=record.status.value))

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        if outcome is StepOutcome.SUCCEEDED:
            return
        undo = ctx.phase is Phase.COMPENSATION
        level = logging.WARNING if outcome is StepOutcome.RETRYING or undo else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        kind = "compensation" if undo else "step"
        verb = "failed, will retry" if outcome is StepOutcome.RETRYING else "failed"
        self.log.log(
            level,
            f"{kind} {ctx.step} {verb}: {error}",
            extra=self._extra(record, step=ctx.step, phase=ctx.phase.value, attempt=ctx.attempt),
        )

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        if change.status is SagaStatus.COMPENSATING and self.log.isEnabledFor(logging.INFO):
            self.log.info(f"saga compensating: {change.error}", extra=self._extra(record))

    def on_finish(self, record: SagaRecord) -> None:
        status = record.status
        level = logging.ERROR if status is SagaStatus.FAILED else logging.INFO
        if not self.log.isEnabledFor(level):
            return
        message = f"saga {status.value.lower()}" + (f": {record.error}" if record.error else "")
        self.log.log(level, message, extra=self._extra(record, status=status.value))
