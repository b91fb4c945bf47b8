"""The body of every ``env.py`` (the gateway's and each service's): one function, so the four
Alembic histories run the same way.

Migrations are run from code (:func:`checkout.db.migrate`), which hands env.py an open connection
in ``config.attributes["connection"]``. The ``alembic`` command line (``alembic -c <ini>``)
connects to ``SAGAWAY_DATABASE_URL`` instead (default: the history's own SQLite file in the
working directory), opened exactly as the service opens it (the async driver, a PostgreSQL
``?schema=`` created if missing, one migrator at a time).

Each history names its tables: autogenerate compares only those, so a service's history never
proposes to create (or drop) another service's tables found in a shared embedded database.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from checkout.db import Base, History, take_migration_lock
from checkout.settings import async_database_url


def _database_url(default: str) -> str:
    return os.environ.get("SAGAWAY_DATABASE_URL") or default


def run_env(history: History, default_url: str) -> None:
    """Run the migrations of ``history`` as Alembic's env.py does."""
    config = context.config

    def include_name(name: str | None, type_: str, parent_names: object) -> bool:
        return type_ != "table" or name in history.tables

    def configure(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=history.version_table,
            include_name=include_name,
            # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    def configure_locked(connection: Connection) -> None:
        take_migration_lock(connection)
        configure(connection)

    async def from_settings() -> None:
        from checkout.bootstrap import open_shop_database

        db = await open_shop_database(_database_url(default_url))
        try:
            async with db.engine.begin() as conn:
                await conn.run_sync(configure_locked)
        finally:
            await db.dispose()

    if context.is_offline_mode():
        context.configure(
            url=async_database_url(_database_url(default_url)),
            target_metadata=Base.metadata,
            version_table=history.version_table,
            include_name=include_name,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection)
        return
    if config.config_file_name is not None:
        # The alembic command line: its usual log lines (an app has its own logging).
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(from_settings())
