"""The participants' tables leave the gateway's history for their services' own.

Payment (accounts, payments), inventory (products, inventory_reservations) and shipping
(shipments, and its new shipped_units) each have an Alembic history of their own now
(``checkout/services/<name>/migrations``), so each can run on a database of its own. This
revision hands the tables over:

* inventory's ``products.shipped`` was written by the shipping service; units shipped are
  shipping's own count now (``shipped_units``, filled here from the created shipments), and
  ``products.reserved`` keeps holding them (``reserved += shipped``), so
  ``stock + reserved`` per product is what ``stock + reserved + shipped`` was;
* a participant table with no rows is dropped (the service's history creates it where the
  service runs); one holding rows is left for its service's history to adopt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)
PARTICIPANT_TABLES = (
    "shipped_units",
    "shipments",
    "inventory_reservations",
    "payments",
    "accounts",
    "products",
)


def _products(*, shipped: bool) -> sa.Table:
    columns: list[sa.Column[object]] = [
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
    ]
    checks = [
        sa.CheckConstraint("stock >= 0", name="ck_products_stock_nonneg"),
        sa.CheckConstraint("reserved >= 0", name="ck_products_reserved_nonneg"),
        sa.CheckConstraint("price_cents >= 0", name="ck_products_price_nonneg"),
    ]
    if shipped:
        columns.append(sa.Column("shipped", sa.Integer(), nullable=False))
        checks.append(sa.CheckConstraint("shipped >= 0", name="ck_products_shipped_nonneg"))
    return sa.Table(
        "products",
        sa.MetaData(),
        *columns,
        *checks,
        sa.PrimaryKeyConstraint("id", name="pk_products"),
    )


def _shipped_units() -> None:
    op.create_table(
        "shipped_units",
        sa.Column("product_id", ID, nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_shipped_units_quantity_nonneg")),
        sa.PrimaryKeyConstraint("product_id", name=op.f("pk_shipped_units")),
    )


def _lines(items: object) -> list[dict[str, object]]:
    value = json.loads(items) if isinstance(items, str) else items
    return list(value or [])


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "shipped" in {c["name"] for c in inspector.get_columns("products")}:
        shipped: Counter[str] = Counter()
        rows = bind.execute(sa.text("SELECT items FROM shipments WHERE status = 'created'"))
        for (items,) in rows:
            for line in _lines(items):
                shipped[str(line["product_id"])] += int(str(line["quantity"]))
        if not inspector.has_table("shipped_units"):
            _shipped_units()
        for product_id, quantity in sorted(shipped.items()):
            bind.execute(
                sa.text("INSERT INTO shipped_units (product_id, quantity) VALUES (:p, :q)"),
                {"p": product_id, "q": quantity},
            )
        bind.execute(sa.text("UPDATE products SET reserved = reserved + shipped"))
        with op.batch_alter_table("products", copy_from=_products(shipped=True)) as batch:
            batch.drop_constraint(op.f("ck_products_shipped_nonneg"), type_="check")
            batch.drop_column("shipped")
    for table in PARTICIPANT_TABLES:
        if sa.inspect(bind).has_table(table):
            count = bind.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar()
            if not count:
                op.drop_table(table)


def _revision_0001() -> ModuleType:
    path = Path(__file__).with_name("0001_initial.py")
    spec = importlib.util.spec_from_file_location("checkout_migration_0001", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    # The gateway's history takes the participants' tables back as 0002 had them. (When the
    # whole embedded shop is downgraded, the services' histories have dropped theirs first.)
    bind = op.get_bind()
    if sa.inspect(bind).has_table("products"):
        with op.batch_alter_table("products", copy_from=_products(shipped=False)) as batch:
            batch.add_column(sa.Column("shipped", sa.Integer(), nullable=False, server_default="0"))
            batch.create_check_constraint(op.f("ck_products_shipped_nonneg"), "shipped >= 0")
        if sa.inspect(bind).has_table("shipped_units"):
            for product_id, quantity in bind.execute(
                sa.text("SELECT product_id, quantity FROM shipped_units")
            ).all():
                bind.execute(
                    sa.text(
                        "UPDATE products SET shipped = :q, reserved = reserved - :q WHERE id = :p"
                    ),
                    {"p": product_id, "q": quantity},
                )
    if sa.inspect(bind).has_table("shipped_units"):
        op.drop_table("shipped_units")
    _revision_0001().create_tables(only_missing=True)
