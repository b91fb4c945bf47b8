"""The inventory service's tables: the catalogue with its stock, and reservations.

``products.reserved`` counts every unit held by a reservation, shipped or not: shipped units are
the shipping service's own count now (its ``shipped_units``), so this service writes only its
own tables. In an embedded database that the gateway's history created before the split (its
0003 already folded the old ``shipped`` column into ``reserved``), existing tables are adopted.

Revision ID: i0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "i0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.String(255)
ID = sa.String(64)


def _exists(table: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if not _exists("products"):
        op.create_table(
            "products",
            sa.Column("id", ID, nullable=False),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("price_cents", sa.BigInteger(), nullable=False),
            sa.Column("stock", sa.Integer(), nullable=False),
            sa.Column("reserved", sa.Integer(), nullable=False),
            sa.CheckConstraint("stock >= 0", name=op.f("ck_products_stock_nonneg")),
            sa.CheckConstraint("reserved >= 0", name=op.f("ck_products_reserved_nonneg")),
            sa.CheckConstraint("price_cents >= 0", name=op.f("ck_products_price_nonneg")),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        )
    if not _exists("inventory_reservations"):
        op.create_table(
            "inventory_reservations",
            sa.Column("idempotency_key", KEY, nullable=False),
            sa.Column("order_id", ID, nullable=True),
            sa.Column("items", sa.JSON(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("compensation_key", KEY, nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.CheckConstraint(
                "status IN ('reserved', 'released', 'cancelled')",
                name=op.f("ck_inventory_reservations_status"),
            ),
            sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_inventory_reservations")),
        )
        op.create_index(
            op.f("ix_inventory_reservations_order_id"), "inventory_reservations", ["order_id"]
        )


def downgrade() -> None:
    op.drop_table("inventory_reservations")
    op.drop_table("products")
