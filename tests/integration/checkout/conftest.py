"""Fixtures: a migrated shop database with demo data, on a SQLite file and on PostgreSQL.

PostgreSQL tests skip when no server answers, except under CI where a missing server is a
failure (``servers.require_server``: the one rule every server-backed test follows). Each
PostgreSQL test gets its own schema in the server's ``postgres`` database, dropped afterwards,
so tests never see each other's rows and can run in parallel.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from checkout.db import Database, migrate, open_database
from checkout.dbexec import EngineExecutor, ShopExecutor, open_executor
from checkout.participants import CheckoutParticipants
from sagaway.store.sqlite import SQLiteStore
from servers import POSTGRES_URL, postgres_check, require_server


async def _postgres_admin() -> object:
    require_server("postgresql", postgres_check)  # the suite-wide skip-or-fail rule
    import asyncpg  # type: ignore[import-untyped]

    return await asyncpg.connect(POSTGRES_URL, timeout=3)


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
    admin = await _postgres_admin()
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
