"""The payment service's tables: customer accounts (balance, default address) and payments.

In an embedded database that the gateway's history created before the split (its 0001 made
every table; its 0003 keeps those holding rows), a table that exists is adopted as it is.

Revision ID: p0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "p0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.String(255)
ID = sa.String(64)


def _exists(table: str) -> bool:
    return sa.inspect(op.get_bind()).has_table(table)


def upgrade() -> None:
    if not _exists("accounts"):
        op.create_table(
            "accounts",
            sa.Column("id", ID, nullable=False),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("balance_cents", sa.BigInteger(), nullable=False),
            sa.Column("ship_street", sa.String(200), nullable=True),
            sa.Column("ship_city", sa.String(100), nullable=True),
            sa.Column("ship_province", sa.String(100), nullable=True),
            sa.Column("ship_postal_code", sa.String(32), nullable=True),
            sa.Column("ship_country", sa.String(64), nullable=True),
            sa.CheckConstraint("balance_cents >= 0", name=op.f("ck_accounts_balance_nonneg")),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        )
    if not _exists("payments"):
        op.create_table(
            "payments",
            sa.Column("idempotency_key", KEY, nullable=False),
            sa.Column("order_id", ID, nullable=True),
            sa.Column("account_id", ID, nullable=True),
            sa.Column("amount_cents", sa.BigInteger(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("compensation_key", KEY, nullable=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.CheckConstraint(
                "status IN ('captured', 'refunded', 'void')", name=op.f("ck_payments_status")
            ),
            sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_payments_amount_nonneg")),
            sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_payments")),
        )
        op.create_index(op.f("ix_payments_order_id"), "payments", ["order_id"])


def downgrade() -> None:
    op.drop_table("payments")
    op.drop_table("accounts")
