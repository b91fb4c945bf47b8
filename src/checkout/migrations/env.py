"""Alembic environment for the shop database.

Migrations are run from code (:func:`checkout.db.migrate`), which hands env.py an open connection
in ``config.attributes["connection"]``. Running the ``alembic`` command line against this
directory also works for authoring new revisions: it then connects to ``SAGAWAY_DATABASE_URL``
with the async driver, exactly as the service does.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from checkout.db import VERSION_TABLE, Base, open_database
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


async def _run_from_settings() -> None:
    db = open_database(Settings().database_url, pool_size=1, max_overflow=0)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_configure)
    finally:
        await db.dispose()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
    else:
        asyncio.run(_run_from_settings())


if context.is_offline_mode():
    run_offline()
else:
    run_online()
