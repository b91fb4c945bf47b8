"""The store contract on the SQLite store (a fresh file per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaway.store.base import SagaStore
from sagaway.store.sqlite import SQLiteStore
from sagaway.testing.contract import SagaStoreContract
from sagaway.testing.contract_compaction import CompactionContract
from sagaway.testing.contract_retention import PruningStoreContract
from sagaway.testing.contract_taking import TakingStoreContract
from sagaway.testing.contract_tiers import OutboxStoreContract, TransactionalStoreContract


class TestSQLiteStore(
    SagaStoreContract,
    OutboxStoreContract,
    TransactionalStoreContract,
    PruningStoreContract,
    CompactionContract,
    TakingStoreContract,
):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SagaStore]:
        async with SQLiteStore(f"sqlite:///{tmp_path / 'sagas.db'}") as store:
            yield store


class TestSQLiteStoreRelaxed(
    SagaStoreContract,
    OutboxStoreContract,
    TransactionalStoreContract,
    PruningStoreContract,
    CompactionContract,
    TakingStoreContract,
):
    """``durable=false`` changes only fsync behaviour, never semantics."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SagaStore]:
        async with SQLiteStore(f"sqlite:///{tmp_path / 'sagas.db'}?durable=false") as store:
            yield store
