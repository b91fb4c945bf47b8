"""Archive files: sagas written out as JSON lines before ``sagaway prune --archive`` removes
them, read back by ``sagaway show --archive FILE ID``.

One line per saga, every field of the record (steps and the whole history included), times as
POSIX seconds, so a line reads back into the same ``SagaRecord``. ``"v"`` is the line format's
version. A saga archived twice (a prune that lost a race and ran again) appears twice: the
last line wins. Lines are appended and fsynced before the sagas are deleted, so a crash in
between leaves a saga in both places, never in neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sagaway.errors import SagaNotFound, SagawayError
from sagaway.state import Event, EventType, Phase, SagaRecord, SagaStatus, StepRecord, StepStatus

FORMAT = 1


def to_json(record: SagaRecord) -> dict[str, Any]:
    return {
        "v": FORMAT,
        "id": record.id,
        "name": record.name,
        "version": record.version,
        "status": record.status.value,
        "input": record.input,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "idempotency_key": record.idempotency_key,
        "deadline_at": record.deadline_at,
        "cancel_requested": record.cancel_requested,
        "error": record.error,
        "pinned": record.pinned,
        "steps": [
            [
                s.name,
                s.phase.value,
                s.status.value,
                s.attempts,
                s.output,
                s.error,
                s.uncertain,
                s.started_at,
                s.finished_at,
            ]
            for s in record.steps.values()
        ],
        "history": [
            [
                e.at,
                e.type.value,
                e.step,
                None if e.phase is None else e.phase.value,
                e.attempt,
                e.detail,
            ]
            for e in record.history
        ],
    }


def from_json(line: dict[str, Any]) -> SagaRecord:
    if line.get("v") != FORMAT:
        raise ValueError(f"archive line format {line.get('v')!r}, this sagaway reads {FORMAT}")
    record = SagaRecord(
        id=line["id"],
        name=line["name"],
        version=line["version"],
        status=SagaStatus(line["status"]),
        input=line["input"],
        created_at=line["created_at"],
        updated_at=line["updated_at"],
        idempotency_key=line["idempotency_key"],
        deadline_at=line["deadline_at"],
        cancel_requested=line["cancel_requested"],
        error=line["error"],
        pinned=line["pinned"],
    )
    for name, phase, status, attempts, output, error, uncertain, started, finished in line["steps"]:
        step = StepRecord(
            name,
            Phase(phase),
            StepStatus(status),
            attempts,
            output,
            error,
            uncertain,
            started,
            finished,
        )
        record.steps[(step.name, step.phase)] = step
    record.history = [
        Event(at, EventType(kind), step, None if phase is None else Phase(phase), attempt, detail)
        for at, kind, step, phase, attempt, detail in line["history"]
    ]
    return record


def append(path: Path, records: Iterable[SagaRecord]) -> int:
    """Append ``records`` and make them durable (fsync) before returning how many."""
    lines = [json.dumps(to_json(r), separators=(",", ":"), allow_nan=False) for r in records]
    if not lines:
        return 0
    with path.open("a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return len(lines)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8") as source:
            for number, text in enumerate(source, 1):
                if text.strip():
                    yield number, json.loads(text)
    except OSError as exc:
        raise SagawayError(f"cannot read the archive {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SagawayError(f"{str(path)!r} is not a sagaway archive (JSON lines): {exc}") from None


def find(path: Path, prefix: str) -> SagaRecord:
    """The archived saga whose id is ``prefix`` or the only one starting with it (its last
    line). ``SagaNotFound`` when none, ``SagawayError`` when several match."""
    exact: dict[str, Any] | None = None
    matches: dict[str, dict[str, Any]] = {}
    for number, line in _lines(path):
        if not isinstance(line, dict) or not isinstance(line.get("id"), str):
            raise SagawayError(f"{str(path)!r} line {number}: not an archived saga")
        if line["id"] == prefix:
            exact = line
        elif prefix and line["id"].startswith(prefix):
            matches[line["id"]] = line
    chosen = exact
    if chosen is None:
        if not matches:
            raise SagaNotFound(prefix)
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:4]) + (", ..." if len(matches) > 4 else "")
            raise SagawayError(f"{prefix!r} matches several archived sagas: {shown}")
        chosen = next(iter(matches.values()))
    try:
        return from_json(chosen)
    except (KeyError, TypeError, ValueError) as exc:
        raise SagawayError(f"{str(path)!r}: saga {chosen['id']} cannot be read: {exc}") from None
