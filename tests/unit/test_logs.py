"""Saga log lines (LoggingHook) and the text / JSON-lines formatters."""

from __future__ import annotations

import io
import json
import logging

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
