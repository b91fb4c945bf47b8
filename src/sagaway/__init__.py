"""Sagaway: durable sagas for Python.

Declare a saga as typed async steps with compensations, run it on an ``Engine`` over a saga log
(``memory://``, ``sqlite:///file.db``, PostgreSQL, Redis) and every transition is durable before
the step it guards runs: a process killed at any instant resumes or compensates on restart.
"""

from sagaway.clock import Clock, SystemClock
from sagaway.context import StepContext
from sagaway.definition import (
    NO_RETRY,
    OnUncertain,
    RetryPolicy,
    Saga,
    Step,
    StepKind,
    declared_sagas,
)
from sagaway.engine import Engine, SignalReceipt
from sagaway.errors import (
    CancelPending,
    CancelRefused,
    DecodeError,
    DefinitionError,
    EffectFailed,
    EffectRefused,
    EngineNotOpen,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    NotWaiting,
    SagaNotFound,
    SagawayError,
    StepFailed,
    StepTimeout,
    StoreError,
    TakeConflict,
    UnknownSagaError,
    UnstorableValue,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store import Page, SagaStore, open_store

__all__ = [
    "NO_RETRY",
    "CancelPending",
    "CancelRefused",
    "Change",
    "Clock",
    "DecodeError",
    "DefinitionError",
    "EffectFailed",
    "EffectRefused",
    "Engine",
    "EngineNotOpen",
    "Event",
    "EventType",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "NotWaiting",
    "OnUncertain",
    "Page",
    "Phase",
    "RetryPolicy",
    "Saga",
    "SagaNotFound",
    "SagaRecord",
    "SagaStatus",
    "SagaStore",
    "SagawayError",
    "SignalReceipt",
    "Step",
    "StepContext",
    "StepFailed",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "StepTimeout",
    "StoreError",
    "SystemClock",
    "TakeConflict",
    "UnknownSagaError",
    "UnstorableValue",
    "declared_sagas",
    "open_store",
]

__version__ = "0.1.0"
