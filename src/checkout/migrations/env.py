"""Alembic environment for the shop database.

Migrations are run from code (:func:`checkout.db.migrate`), which hands env.py an open connection
in ``config.attributes["connection"]``. The ``alembic`` command line (``alembic.ini`` at the
repository root: ``alembic current``, ``alembic upgrade head``, ``alembic revision``) connects
to ``SAGAWAY_DATABASE_URL`` instead, opened exactly as the service opens it (the async driver,
a PostgreSQL ``?schema=`` created if missing, one migrator at a time).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from checkout.bootstrap import open_shop_database
from checkout.db import VERSION_TABLE, Base, take_migration_lock
from checkout.settings import Settings

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=Settings().async_database_url,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _configure_locked(connection: Connection) -> None:
    take_migration_lock(connection)
    _configure(connection)


async def _run_from_settings() -> None:
    db = await open_shop_database(Settings().database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_configure_locked)
    finally:
        await db.dispose()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        if config.config_file_name is not None:
            # The alembic command line: its usual log lines (an app has its own logging).
            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(_run_from_settings())


if context.is_offline_mode():
    run_offline()
else:
    run_online()
