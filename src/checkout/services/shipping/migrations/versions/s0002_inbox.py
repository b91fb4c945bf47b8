"""The shipping service's inbox: the saga commands it answered (sagaway.participant), written in
the transaction of each command's effect, so a redelivered command gets the recorded reply.

Revision ID: s0002
Revises: s0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "s0002"
down_revision: str | Sequence[str] | None = "s0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "shipping_inbox",
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("command", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("reply", sa.JSON(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_shipping_inbox")),
    )


def downgrade() -> None:
    op.drop_table("shipping_inbox")
