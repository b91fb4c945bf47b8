"""``alembic`` from the repository root works as Alembic users expect (the gateway's history; each
service has its own ini, see test_checkout_service_migrations): the shipped
``alembic.ini`` finds the shop's migrations and the database of ``SAGAWAY_DATABASE_URL``
(default ``sqlite:///./sagaway.db``), on SQLite and on a PostgreSQL ``?schema=``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
from alembic.script import ScriptDirectory

from checkout.db import alembic_config
from servers import (
    POSTGRES_URL,
    drop_pg_schema,
    pg_schema_url,
    postgres_check,
    require_server,
    unique_pg_schema,
)

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head() or "none"


def alembic(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWAY_")}
    if database_url is not None:
        env["SAGAWAY_DATABASE_URL"] = database_url
    return subprocess.run(
        [str(ALEMBIC), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_repository_ships_an_alembic_ini() -> None:
    assert (ROOT / "alembic.ini").is_file()


def test_alembic_current_and_upgrade_from_the_repo_root(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    before = alembic("current", cwd=ROOT, database_url=url)
    assert before.returncode == 0, before.stderr
    assert HEAD not in before.stdout

    upgraded = alembic("upgrade", "head", cwd=ROOT, database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade" in upgraded.stderr  # Alembic's usual log lines are shown

    after = alembic("current", cwd=ROOT, database_url=url)
    assert after.returncode == 0, after.stderr
    assert f"{HEAD} (head)" in after.stdout
    with sqlite3.connect(tmp_path / "shop.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    # The gateway's tables only: the participants' are in their services' histories.
    assert {"orders", "order_items", "checkout_alembic_version"} <= tables
    assert not {"products", "accounts", "payments", "shipments"} & tables


def test_default_url_is_sagaway_db_in_the_working_directory(tmp_path: Path) -> None:
    result = alembic(
        "-c", str(ROOT / "alembic.ini"), "upgrade", "head", cwd=tmp_path, database_url=None
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "sagaway.db") as conn:
        version = conn.execute("SELECT version_num FROM checkout_alembic_version").fetchall()
    assert version == [(HEAD,)]


async def test_alembic_upgrade_on_a_postgresql_schema() -> None:
    require_server("postgresql", postgres_check)
    schema = unique_pg_schema("alembic")
    try:
        result = alembic("upgrade", "head", cwd=ROOT, database_url=pg_schema_url(schema))
        assert result.returncode == 0, result.stderr
        current = alembic("current", cwd=ROOT, database_url=pg_schema_url(schema))
        assert f"{HEAD} (head)" in current.stdout
        with psycopg.connect(POSTGRES_URL) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchall()
        assert {"orders", "checkout_alembic_version"} <= {r[0] for r in rows}
    finally:
        await drop_pg_schema(schema)
