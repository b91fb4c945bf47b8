"""Saga log lines (LoggingHook) and the text / JSON-lines formatters."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pytest
from sagakit import Kit, Order

from sagaway import Phase
from sagaway.hooks import ClaimReason
from sagaway.logs import JsonFormatter, LoggingHook, TextFormatter, configure_logging
from sagaway.state import SagaRecord, SagaStatus
from sagaway.testing import saga_engine


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, object]]]:
    keys = ("saga_id", "saga", "order_id", "step", "phase", "attempt", "status")
    return [
        (
            r.levelname,
            r.getMessage(),
            {k: getattr(r, k) for k in keys if getattr(r, k, None) is not None},
        )
        for r in caplog.records
        if r.name == "sagaway.sagas"
    ]


async def test_one_line_per_start_retry_failure_compensation_and_finish(
    kit: Kit, order: Order, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sagaway.sagas")
    kit.faults.fail("b", times=1)
    kit.faults.reject("c", "Insufficient funds")
    hook = LoggingHook(fields=lambda record: {"order_id": f"ord-{record.input['id']}"})
    async with saga_engine(kit.saga, hooks=[hook]) as h:
        record = await h.run(kit.saga, order)
    ids = {"saga_id": record.id, "saga": "order", "order_id": "ord-o-1"}
    assert lines(caplog) == [
        ("INFO", "saga started", ids),
        (
            "WARNING",
            "step b failed, will retry: ConnectionError: injected fault in b (forward, attempt 1)",
            {**ids, "step": "b", "phase": "forward", "attempt": 1},
        ),
        (
            "INFO",
            "step c failed: Insufficient funds",
            {**ids, "step": "c", "phase": "forward", "attempt": 1},
        ),
        ("INFO", "saga compensating: Insufficient funds", ids),
        ("INFO", "saga compensated: Insufficient funds", {**ids, "status": "COMPENSATED"}),
    ]


async def test_a_failed_saga_is_an_error_and_its_retry_a_line(
    kit: Kit, order: Order, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sagaway.sagas")
    kit.faults.fail("a", times=None, phase=Phase.COMPENSATION)
    kit.faults.reject("b", "no")
    async with saga_engine(kit.saga, hooks=[LoggingHook()]) as h:
        record = await h.run(kit.saga, order)
        kit.faults.clear()
        await h.engine.retry(record.id)
        await h.wait(record.id)
    found = [(level, message) for level, message, _ in lines(caplog)]
    assert ("ERROR", f"saga failed: {record.error}") in found
    assert found[-2:] == [
        ("INFO", "saga retried by an operator"),
        ("INFO", "saga compensated: no"),
    ]


def test_json_lines_carry_the_fields() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "INFO", stream=stream)
    try:
        logging.getLogger("sagaway.sagas").info(
            "saga started", extra={"saga_id": "s1", "order_id": "o1"}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "saga started"
    assert line["level"] == "INFO"
    assert line["logger"] == "sagaway.sagas"
    assert (line["saga_id"], line["order_id"]) == ("s1", "o1")
    assert line["ts"].endswith("Z")
    assert len(line["ts"]) == len("2026-01-01T10:00:00.123Z")


def test_text_lines_append_fields_as_key_value() -> None:
    record = logging.LogRecord("sagaway.sagas", logging.INFO, __file__, 1, "saga %s", ("x",), None)
    record.saga_id, record.error, record.step, record.note = "s1", "two words", None, ""
    record.attempt = 2
    record.created = 1767261600.5  # 2026-01-01T10:00:00.5 UTC
    text = TextFormatter().format(record)
    assert text.startswith("2026-01-01T10:00:00.500Z INFO")
    # In the order set, None left out, an empty or spaced value quoted.
    assert text.endswith(
        ' INFO sagaway.sagas: saga x saga_id=s1 error="two words" note="" attempt=2'
    )
    assert json.loads(JsonFormatter().format(record))["error"] == "two words"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("yaml")


def test_a_reply_taking_its_parked_saga_on_is_debug_a_takeover_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One "saga resumed" line per remote step at INFO was noise (and CPU): a reply or a signal
    resuming a parked saga is logged at DEBUG; a takeover after a crash stays INFO."""
    record = SagaRecord(
        id="s-1",
        name="order",
        version=1,
        status=SagaStatus.RUNNING,
        input={"id": "o-1"},
        created_at=0.0,
        updated_at=0.0,
    )
    hook = LoggingHook()
    caplog.set_level(logging.INFO, "sagaway.sagas")
    hook.after_claim(record, ClaimReason.REPLIED)
    hook.after_claim(record, ClaimReason.RECOVERED)
    assert [(level, message) for level, message, _ in lines(caplog)] == [("INFO", "saga resumed")]
    caplog.clear()
    caplog.set_level(logging.DEBUG, "sagaway.sagas")
    hook.after_claim(record, ClaimReason.REPLIED)
    assert [(level, message) for level, message, _ in lines(caplog)] == [("DEBUG", "saga resumed")]


# The saga lines of the tests below: a logger of their own, which pytest's capture leaves alone.
LINES = "lines"


def _lines() -> logging.Logger:
    return logging.getLogger(LINES)


def _record(status: SagaStatus = SagaStatus.SUCCEEDED, error: str | None = None) -> SagaRecord:
    return SagaRecord(
        id="s-1",
        name="order",
        version=1,
        status=status,
        input={"id": "o-1"},
        created_at=0.0,
        updated_at=0.0,
        error=error,
    )


def _hook_lines(hook: LoggingHook) -> None:
    hook.saga_started(_record())
    hook.on_finish(_record())
    hook.on_finish(_record(SagaStatus.COMPENSATED, "Insufficient funds"))
    hook.on_finish(_record(SagaStatus.FAILED, "two words"))


@pytest.fixture
def text_stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """A stream for the lines, the clock fixed; see :func:`_only_handler`."""
    monkeypatch.setattr(time, "time", lambda: 1767261600.25)
    monkeypatch.setattr(_lines(), "propagate", False)
    monkeypatch.setattr(_lines(), "level", logging.INFO)
    return io.StringIO()


def _only_handler(monkeypatch: pytest.MonkeyPatch, stream: io.StringIO) -> logging.Handler:
    """The lines' logger writing to ``stream`` through a handler as ``configure_logging``
    makes, its only one (set in the test itself: pytest attaches its capture handler to a
    logger that does not propagate when the test starts)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    monkeypatch.setattr(_lines(), "handlers", [handler])
    return handler


def _handled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The messages that went through logging's own dispatch (``Logger.handle``)."""
    seen: list[str] = []
    handle = logging.Logger.handle

    def counting(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        handle(self, record)

    monkeypatch.setattr(logging.Logger, "handle", counting)
    return seen


def test_a_plain_text_handler_gets_the_lines_logging_writes(
    text_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the only handler is a text one as configure_logging makes, the hook writes its
    lines without a record: the very text logging's own path writes for them."""
    _only_handler(monkeypatch, text_stream)
    handled = _handled(monkeypatch)
    hook = LoggingHook(_lines(), fields=lambda record: {"order_id": "ord-1", "none": None, "e": ""})
    _hook_lines(hook)
    fast = text_stream.getvalue()
    assert handled == []  # no record made, no dispatch
    assert fast.splitlines()[0] == (
        "2026-01-01T10:00:00.250Z INFO lines: saga started saga_id=s-1 saga=order"
        ' order_id=ord-1 e=""'
    )
    assert fast.splitlines()[3].startswith(
        "2026-01-01T10:00:00.250Z ERROR lines: saga failed: two words saga_id=s-1 "
    )
    # The same lines through logging's own path (a filter that passes all turns it on).
    text_stream.seek(0)
    text_stream.truncate()
    monkeypatch.setattr(logging.getLogger(LINES), "filters", [lambda record: True])
    _hook_lines(hook)
    assert len(handled) == 4
    assert text_stream.getvalue() == fast


class _Stream(logging.StreamHandler):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    "change",
    [
        "second handler",
        "logger filter",
        "handler filter",
        "handler level",
        "record factory",
        "json formatter",
        "handler subclass",
        "no handler on the way",
    ],
)
def test_anything_else_on_the_way_gets_logging_s_own_path(
    text_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A record something else may see or change (another handler, a filter, a record
    factory, another formatter or handler class) goes through logging, which writes it."""
    sagas = logging.getLogger(LINES)
    handler = _only_handler(monkeypatch, text_stream)
    if change == "second handler":
        monkeypatch.setattr(sagas, "handlers", [handler, logging.NullHandler()])
    elif change == "logger filter":
        monkeypatch.setattr(sagas, "filters", [lambda record: True])
    elif change == "handler filter":
        monkeypatch.setattr(handler, "filters", [lambda record: True])
    elif change == "handler level":
        monkeypatch.setattr(handler, "level", logging.ERROR)
    elif change == "record factory":
        factory = logging.getLogRecordFactory()
        monkeypatch.setattr(logging, "_logRecordFactory", lambda *a, **k: factory(*a, **k))
    elif change == "json formatter":
        monkeypatch.setattr(handler, "formatter", JsonFormatter())
    elif change == "handler subclass":
        other = _Stream(text_stream)
        other.setFormatter(TextFormatter())
        monkeypatch.setattr(sagas, "handlers", [other])
    else:  # nothing but logging's last resort (WARNING and up) on the way
        monkeypatch.setattr(sagas, "handlers", [])
    handled = _handled(monkeypatch)
    LoggingHook(_lines()).saga_started(_record())
    assert handled == ["saga started"]
    written = text_stream.getvalue()
    if change in ("handler level", "no handler on the way"):
        assert written == ""
    elif change == "json formatter":
        assert json.loads(written)["saga_id"] == "s-1"
    else:
        assert written == (
            "2026-01-01T10:00:00.250Z INFO lines: saga started saga_id=s-1 saga=order\n"
        )


class _Tagging(logging.Logger):
    def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = super().makeRecord(*args, **kwargs)
        record.tag = "mine"
        return record


def test_a_logger_subclass_makes_its_own_records(
    text_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Logger subclass may make or handle its records its own way: its lines take
    logging's path, whatever handler it has (here the plain text one)."""
    tagging = _Tagging("tagging", logging.INFO)
    handler = logging.StreamHandler(text_stream)
    handler.setFormatter(TextFormatter())
    tagging.addHandler(handler)
    LoggingHook(tagging).saga_started(_record())
    assert text_stream.getvalue() == (
        "2026-01-01T10:00:00.250Z INFO tagging: saga started saga_id=s-1 saga=order tag=mine\n"
    )


def test_a_reserved_field_is_refused_as_logging_refuses_it(
    text_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_handler(monkeypatch, text_stream)
    hook = LoggingHook(_lines(), fields=lambda record: {"message": "x"})
    with pytest.raises(KeyError, match="overwrite 'message'"):
        hook.saga_started(_record())
    assert text_stream.getvalue() == ""


def test_a_failed_write_is_the_handler_s_error_to_report(
    text_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _only_handler(monkeypatch, text_stream)
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)

    def broken(text: str) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(text_stream, "write", broken)
    LoggingHook(_lines()).saga_started(_record())
    assert [(r.getMessage(), r.levelno, getattr(r, "saga_id", None)) for r in reported] == [
        ("saga started", logging.INFO, "s-1")
    ]
