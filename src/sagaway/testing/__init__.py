"""Test your own sagas without servers: a virtual clock, fault injection, a test engine.

* ``VirtualClock``: time that moves only when the test calls ``advance``, so backoff, leases
  and deadlines are tested instantly and deterministically.
* ``Faults`` (and the one-shot ``flaky``, ``fails_when``, ``hangs`` decorators): make a step
  fail transiently, fail for business reasons, hang until a timeout, or lose its response.
* ``EffectLedger``: an idempotent in-memory participant that counts effects per idempotency
  key, so a test can assert every action and compensation took effect exactly once.
* ``saga_engine(*sagas)``: ``async with`` an opened Engine on a MemoryStore with a
  VirtualClock, yielding a ``SagaHarness`` (engine, store, clock, ``run``).
* ``SagaStoreContract``: the store contract test base class for a new backend, and
  ``OutboxStoreContract`` / ``TransactionalStoreContract`` / ``PruningStoreContract`` for
  the capability tiers it implements, ``TakingStoreContract`` (a parked saga taken by the
  write that moves it on), ``CompactionContract`` (finished sagas read back as
  written, whatever form the store keeps them in); ``TransportContract`` the same for a new
  transport.
  They are imported lazily because they need pytest, which ``sagaway.testing`` itself never
  requires.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from sagaway.testing.clock import VirtualClock
from sagaway.testing.faults import EffectLedger, Faults, Hang, fails_when, flaky, hangs
from sagaway.testing.harness import SagaHarness, saga_engine

__all__ = [
    "CompactionContract",
    "EffectLedger",
    "Faults",
    "Hang",
    "OutboxStoreContract",
    "PruningStoreContract",
    "SagaHarness",
    "SagaStoreContract",
    "TakingStoreContract",
    "TransactionalStoreContract",
    "TransportContract",
    "VirtualClock",
    "fails_when",
    "flaky",
    "hangs",
    "saga_engine",
]

_LAZY = {
    "CompactionContract": "sagaway.testing.contract_compaction",
    "SagaStoreContract": "sagaway.testing.contract",
    "OutboxStoreContract": "sagaway.testing.contract_tiers",
    "PruningStoreContract": "sagaway.testing.contract_retention",
    "TakingStoreContract": "sagaway.testing.contract_taking",
    "TransactionalStoreContract": "sagaway.testing.contract_tiers",
    "TransportContract": "sagaway.testing.transport_contract",
}


def __getattr__(name: str) -> Any:
    """Import pytest-dependent names only when asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
