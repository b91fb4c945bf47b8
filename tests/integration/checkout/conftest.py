"""Fixtures: a migrated shop database with demo data, on a SQLite file and on PostgreSQL.

PostgreSQL tests skip when no server answers, except under CI=true where a missing server is a
failure (CI must not go green by skipping). Each PostgreSQL test gets its own schema, dropped
afterwards, so tests never see each other's rows and can run in parallel.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from checkout.db import Database, migrate, open_database
from checkout.dbexec import EngineExecutor, ShopExecutor, open_executor
from checkout.participants import CheckoutParticipants
from sagaway.store.sqlite import SQLiteStore

POSTGRES_URL = os.environ.get(
    "SAGAWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _postgres_admin() -> object:
    import asyncpg  # type: ignore[import-untyped]

    url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    return await asyncpg.connect(url, timeout=3)


async def _postgres_or_skip() -> object:
    try:
        return await _postgres_admin()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required under CI: {exc!r}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc!r}")


@pytest.fixture(params=["sqlite", "sqlite-log", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty shop database on each backend. ``sqlite-log``: the same SQLite file,
    with the participants' writes going through a saga store's group commit (see
    ``executor``)."""
    if request.param in ("sqlite", "sqlite-log"):
        database = open_database(f"sqlite:///{tmp_path / 'shop.db'}")
        await migrate(database)
        yield database
        await database.dispose()
        return
    admin = await _postgres_or_skip()
    schema = f"checkout_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[attr-defined]
    try:
        database = open_database(POSTGRES_URL, schema=schema)
        try:
            await migrate(database)
            yield database
        finally:
            await database.dispose()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[attr-defined]
        await admin.close()  # type: ignore[attr-defined]


@pytest.fixture
async def executor(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path
) -> AsyncIterator[ShopExecutor]:
    """How the participants reach ``db``: one transaction per operation on its engine, or,
    for ``sqlite-log``, the group commit of a SQLite saga store in the same file (as
    ``checkout serve`` does with the default single file)."""
    if request.node.callspec.params.get("db") != "sqlite-log":
        yield EngineExecutor(db)
        return
    store = SQLiteStore(f"sqlite:///{tmp_path / 'shop.db'}")
    running = await open_executor(db, store)
    assert type(running).__name__ == "StoreExecutor"
    try:
        yield running
    finally:
        await running.close()  # closes the store too


@pytest.fixture
async def shop(db: Database, executor: ShopExecutor) -> CheckoutParticipants:
    """Participants over a database holding the demo data."""
    participants = CheckoutParticipants.from_database(db, executor)
    await participants.shop.load_demo_data()
    return participants
