"""``SagaStore.stranded``: unfinished sagas no engine drives, of definitions an engine does not
know. The SQLite store answers with one query, the base class by paging: both must agree."""

from pathlib import Path

import pytest

from sagaway import SagaStatus, SagaStore
from sagaway.state import NewSaga
from sagaway.store.memory import MemoryStore
from sagaway.store.sqlite import SQLiteStore

NOW = 1_700_000_000.0


def _saga(
    n: int, name: str, status: SagaStatus, owner: str | None, expires: float | None
) -> NewSaga:
    return NewSaga(
        id=f"s{n}",
        name=name,
        version=2,
        input=None,
        at=NOW - 100 + n,
        status=status,
        owner=owner,
        lease_expires_at=expires,
    )


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_stranded_counts_undriven_sagas_of_unknown_definitions(
    kind: str, tmp_path: Path
) -> None:
    store: SagaStore = (
        MemoryStore() if kind == "memory" else SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}")
    )
    async with store:
        for new in [
            _saga(1, "lost", SagaStatus.RUNNING, "dead", NOW - 1),  # lease expired
            _saga(2, "lost", SagaStatus.PENDING, None, None),  # never claimed
            _saga(3, "lost", SagaStatus.COMPENSATING, "me", NOW + 60),  # mine, a past life
            _saga(4, "lost", SagaStatus.RUNNING, "alive", NOW + 60),  # driven by someone
            _saga(5, "lost", SagaStatus.SUCCEEDED, None, None),  # finished
            _saga(6, "known", SagaStatus.RUNNING, "dead", NOW - 1),  # this engine resumes it
        ]:
            await store.create(new)
        found = await store.stranded(now=NOW, owner="me", known={("known", 2)})
    assert found == {("lost", 2): 3}
