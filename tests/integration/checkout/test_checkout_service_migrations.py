"""Each service owns its tables and its Alembic history; the gateway's revision 0003 hands an
embedded database made before the split over to them without losing a unit or a cent."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from checkout.db import EMBEDDED, GATEWAY, SERVICE_HISTORIES, migrate, open_database
from sagaway.store.sqlite import PAGE_SIZE as LOG_PAGE_SIZE

ROOT = Path(__file__).resolve().parents[3]
ALEMBIC = Path(sys.executable).with_name("alembic")


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.mark.parametrize("service", sorted(SERVICE_HISTORIES))
async def test_a_service_database_holds_only_its_tables(tmp_path: Path, service: str) -> None:
    history = SERVICE_HISTORIES[service]
    db = open_database(f"sqlite:///{tmp_path / f'{service}.db'}")
    try:
        await migrate(db, histories=[history])
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_tables) == {*history.tables, history.version_table}
    finally:
        await db.dispose()


async def test_revision_0003_moves_shipped_units_to_shipping_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        await migrate(db, "0002", histories=[GATEWAY])
        async with db.engine.begin() as conn:
            # A shop before the split: 3 units of p1 shipped (shipping wrote products.shipped).
            await conn.execute(
                text(
                    "INSERT INTO products (id, name, price_cents, stock, reserved, shipped) "
                    "VALUES ('p1', 'P', 100, 5, 1, 3)"
                )
            )
            now = "2026-01-01 00:00:00"
            for key, status, qty in (("k1", "created", 3), ("k2", "cancelled", 7)):
                await conn.execute(
                    text(
                        "INSERT INTO shipments (idempotency_key, order_id, items, status, "
                        "created_at, updated_at) VALUES (:k, 'o', :items, :s, :now, :now)"
                    ),
                    {
                        "k": key,
                        "s": status,
                        "now": now,
                        "items": f'[{{"product_id": "p1", "quantity": {qty}}}]',
                    },
                )
        await migrate(db, histories=EMBEDDED)
        async with db.engine.connect() as conn:
            product = (await conn.execute(text("SELECT * FROM products"))).mappings().one()
            shipped = (await conn.execute(text("SELECT * FROM shipped_units"))).all()
            tables = await conn.run_sync(_tables)
        assert dict(product) == {
            "id": "p1",
            "name": "P",
            "price_cents": 100,
            "stock": 5,
            "reserved": 4,
        }
        assert [tuple(row) for row in shipped] == [("p1", 3)]
        # Empty participant tables were handed over and recreated by their services.
        assert {"payments", "accounts", "inventory_reservations"} <= tables
    finally:
        await db.dispose()


@pytest.mark.parametrize("service", sorted(SERVICE_HISTORIES))
def test_alembic_command_per_service(tmp_path: Path, service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWAY_")}
    ini = ROOT / "src" / "checkout" / "services" / service / "alembic.ini"
    result = subprocess.run(
        [str(ALEMBIC), "-c", str(ini), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    history = SERVICE_HISTORIES[service]
    with sqlite3.connect(tmp_path / f"{service}.db") as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert tables == {*history.tables, history.version_table}


async def test_a_new_embedded_database_gets_the_saga_logs_page_size(tmp_path: Path) -> None:
    # The embedded default keeps the shop and the saga log in one file, which the shop's
    # migrations create before the log opens it: the file must still get the log's pages.
    path = tmp_path / "sagaway.db"
    db = open_database(f"sqlite:///{path}")
    try:
        await migrate(db, histories=EMBEDDED)
    finally:
        await db.dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == LOG_PAGE_SIZE == 8192
