"""The saga store contract as tests: every backend must pass the same ones.

Subclass ``SagaStoreContract`` in a test module and provide an async fixture ``store`` that
yields an opened, empty store::

    class TestMyStore(SagaStoreContract):
        @pytest.fixture
        async def store(self) -> AsyncIterator[SagaStore]:
            async with MyStore(...) as store:
                yield store

The tests are async methods (run them with pytest-asyncio; in strict mode decorate the fixture
with ``pytest_asyncio.fixture``). They pass explicit times and never sleep, so they are fast
and deterministic on any backend. The contract modules are the only place sagaway imports
pytest.

The contract is split by theme (``contract_records``, ``contract_ownership``,
``contract_parked``; the data its tests write in ``contract_data``); the capability tiers have
their own (``contract_tiers``, ``contract_retention``, ``contract_compaction``).
"""

from __future__ import annotations

from sagaway.testing.contract_data import DEF, LEASE, T0, UNSTORABLE, new_saga, running
from sagaway.testing.contract_ownership import OwnershipContract
from sagaway.testing.contract_parked import ParkedSagaContract
from sagaway.testing.contract_records import RecordsContract

__all__ = [
    "DEF",
    "LEASE",
    "T0",
    "UNSTORABLE",
    "OwnershipContract",
    "ParkedSagaContract",
    "RecordsContract",
    "SagaStoreContract",
    "new_saga",
    "running",
]


class SagaStoreContract(RecordsContract, OwnershipContract, ParkedSagaContract):
    """What ``sagaway.store.base.SagaStore`` promises, checked against one backend (parked
    sagas included: every store supports them)."""
