"""The store contract on the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagaway.store.base import SagaStore
from sagaway.store.memory import MemoryStore
from sagaway.testing.contract import SagaStoreContract
from sagaway.testing.contract_compaction import CompactionContract
from sagaway.testing.contract_retention import PruningStoreContract
from sagaway.testing.contract_taking import TakingStoreContract
from sagaway.testing.contract_tiers import OutboxStoreContract, TransactionalStoreContract


class TestMemoryStore(
    SagaStoreContract,
    OutboxStoreContract,
    TransactionalStoreContract,
    PruningStoreContract,
    CompactionContract,
    TakingStoreContract,
):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SagaStore]:
        async with MemoryStore() as store:
            yield store
