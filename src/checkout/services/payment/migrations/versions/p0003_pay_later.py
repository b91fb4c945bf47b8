"""Seed 004's payment service: its pay-later payments (pending until the customer confirms
or cancels), the events it handled (inbox) and emitted (outbox). The money moves through this
service's ``payments`` table (``charge_key``), so balances + captured payments holds.

Earlier versions created these tables at start-up (``create_all``): a table already there is
adopted as it is.

Revision ID: p0003
Revises: p0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "p0003"
down_revision: str | Sequence[str] | None = "p0002"
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
    if _missing("flow_payments"):
        op.create_table(
            "flow_payments",
            sa.Column("id", ID, nullable=False),
            sa.Column("order_id", ID, nullable=False),
            sa.Column("account_id", ID, nullable=False),
            sa.Column("amount_cents", sa.BigInteger(), nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("flow", sa.String(32), nullable=False),
            sa.Column("charge_key", sa.String(255), nullable=False),
            sa.Column("refunded", sa.String(8), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=op.f("pk_flow_payments")),
            sa.UniqueConstraint("order_id", name=op.f("uq_flow_payments_order_id")),
        )
        op.create_index(op.f("ix_flow_payments_expires_at"), "flow_payments", ["expires_at"])
    _inbox("flow_payment_inbox")
    _outbox("flow_payment_outbox")


def downgrade() -> None:
    for name in ("flow_payment_outbox", "flow_payment_inbox", "flow_payments"):
        op.drop_table(name)
