"""Seed 004's delivery part of the shipping service: a pay-later order's delivery (the
courier serving its city, or why none), the events it handled (inbox) and emitted (outbox).

Earlier versions created these tables at start-up (``create_all``): a table already there is
adopted as it is.

Revision ID: s0003
Revises: s0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "s0003"
down_revision: str | Sequence[str] | None = "s0002"
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
    if _missing("flow_deliveries"):
        op.create_table(
            "flow_deliveries",
            sa.Column("order_id", ID, nullable=False),
            sa.Column("courier", sa.String(100), nullable=True),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("order_id", name=op.f("pk_flow_deliveries")),
        )
    _inbox("flow_delivery_inbox")
    _outbox("flow_delivery_outbox")


def downgrade() -> None:
    for name in ("flow_delivery_outbox", "flow_delivery_inbox", "flow_deliveries"):
        op.drop_table(name)
