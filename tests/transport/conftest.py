"""Participant databases for the transport suite: a SQLite file and a fresh PostgreSQL schema
(real servers: PostgreSQL skips locally when down, fails under CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servers import POSTGRES_URL, fresh_pg_schema, pg_schema_url


@pytest.fixture(params=["sqlite", "postgresql"])
async def participant_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'participant.db'}"
        return
    async with fresh_pg_schema("participant") as schema:
        yield pg_schema_url(schema, POSTGRES_URL)
