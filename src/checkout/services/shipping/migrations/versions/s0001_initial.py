"""The shipping service's tables: shipments, and the units shipped per product.

``shipped_units`` moves in the same transaction as a shipment is created or cancelled (it used
to be a column of inventory's ``products``, which shipping then wrote: no more). In an embedded
database that the gateway's history created before the split, existing tables are adopted (its
0003 already filled ``shipped_units`` from the created shipments).

Revision ID: s0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "s0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.String(255)
ID = sa.String(64)


def _exists(table: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if not _exists("shipments"):
        op.create_table(
            "shipments",
            sa.Column("idempotency_key", KEY, nullable=False),
            sa.Column("order_id", ID, nullable=True),
            sa.Column("courier", sa.String(100), nullable=True),
            sa.Column("items", sa.JSON(), nullable=False),
            sa.Column("address", sa.JSON(), nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("compensation_key", KEY, nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.CheckConstraint(
                "status IN ('created', 'cancelled', 'void')", name=op.f("ck_shipments_status")
            ),
            sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_shipments")),
        )
        op.create_index(op.f("ix_shipments_order_id"), "shipments", ["order_id"])
    if not _exists("shipped_units"):
        op.create_table(
            "shipped_units",
            sa.Column("product_id", ID, nullable=False),
            sa.Column("quantity", sa.Integer(), nullable=False),
            sa.CheckConstraint("quantity >= 0", name=op.f("ck_shipped_units_quantity_nonneg")),
            sa.PrimaryKeyConstraint("product_id", name=op.f("pk_shipped_units")),
        )


def downgrade() -> None:
    op.drop_table("shipped_units")
    op.drop_table("shipments")
