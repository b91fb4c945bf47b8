"""Seed 004's order service: its orders (pending payment -> confirmed -> completed, or
cancelled), the events it handled (inbox) and the events it emitted, not yet published (outbox).

Earlier versions created these tables at start-up (``create_all``): a table already there is
adopted as it is.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(64)


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def _inbox(name: str) -> None:
    if _missing(name):
        op.create_table(
            name,
            sa.Column("message_id", sa.String(255), nullable=False),
            sa.Column("command", sa.String(200), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("ok", sa.Boolean(), nullable=False),
            sa.Column("reply", sa.JSON(), nullable=False),
            sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("message_id", name=op.f(f"pk_{name}")),
        )


def _outbox(name: str) -> None:
    if _missing(name):
        op.create_table(
            name,
            sa.Column("id", ID, nullable=False),
            sa.Column("type", sa.String(100), nullable=False),
            sa.Column("correlation_id", sa.String(255), nullable=False),
            sa.Column("body", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        )
        op.create_index(op.f(f"ix_{name}_correlation_id"), name, ["correlation_id"])
        op.create_index(op.f(f"ix_{name}_created_at"), name, ["created_at"])


def upgrade() -> None:
    if _missing("flow_orders"):
        op.create_table(
            "flow_orders",
            sa.Column("id", ID, nullable=False),
            sa.Column("customer_id", ID, nullable=False),
            sa.Column("items", sa.JSON(), nullable=False),
            sa.Column("shipping_address", sa.JSON(), nullable=False),
            sa.Column("amount_cents", sa.BigInteger(), nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("flow", sa.String(32), nullable=False),
            sa.Column("payment_id", ID, nullable=False),
            sa.Column("saga_id", ID, nullable=True),
            sa.Column("courier", sa.String(100), nullable=True),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_orders")),
            sa.UniqueConstraint("payment_id", name=op.f("uq_flow_orders_payment_id")),
        )
    _inbox("flow_order_inbox")
    _outbox("flow_order_outbox")


def downgrade() -> None:
    for name in ("flow_order_outbox", "flow_order_inbox", "flow_orders"):
        op.drop_table(name)
