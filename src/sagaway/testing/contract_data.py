"""The store contract's test data: the saga definition, times and lease its tests use, a new
saga and a running step row as they write them, and the values no store can keep."""

from __future__ import annotations

import math
from typing import Any

from sagaway.state import (
    Event,
    EventType,
    NewSaga,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)

__all__ = ["DEF", "LEASE", "T0", "UNSTORABLE", "new_saga", "running"]

DEF = ("contract", 1)
T0 = 1_000.0
LEASE = 30.0


def new_saga(
    saga_id: str,
    *,
    at: float = T0,
    name: str = DEF[0],
    version: int = DEF[1],
    status: SagaStatus = SagaStatus.PENDING,
    key: str | None = None,
    owner: str | None = None,
    lease_until: float | None = None,
    input: Any = None,
) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name=name,
        version=version,
        input={"order": saga_id} if input is None else input,
        at=at,
        status=status,
        idempotency_key=key,
        owner=owner,
        lease_expires_at=lease_until,
        events=[Event(at=at, type=EventType.SAGA_CREATED)],
    )


# Values no store can keep (not JSON, NaN/infinity, NUL, a lone surrogate): every store refuses
# them with UnstorableValue, before anything is written or batched.
UNSTORABLE: list[Any] = [
    object(),
    b"bytes",
    math.nan,
    -math.inf,
    "nul \u0000 inside",
    "\ud800",
    {"deep": [1, {"x": object()}]},
    {"key \u0000": 1},
]


def running(step: str, attempts: int = 1, at: float = T0) -> StepRecord:
    return StepRecord(step, Phase.FORWARD, StepStatus.RUNNING, attempts=attempts, started_at=at)
