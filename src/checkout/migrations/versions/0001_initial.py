"""Initial shop schema: catalog, accounts, orders, and the participants' idempotent ledgers.

Revision ID: 0001
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.String(255)
ID = sa.String(64)


def _address() -> list[sa.Column[str]]:
    return [
        sa.Column("ship_street", sa.String(200), nullable=True),
        sa.Column("ship_city", sa.String(100), nullable=True),
        sa.Column("ship_province", sa.String(100), nullable=True),
        sa.Column("ship_postal_code", sa.String(32), nullable=True),
        sa.Column("ship_country", sa.String(64), nullable=True),
    ]


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    create_tables()


def create_tables(*, only_missing: bool = False) -> None:
    """The tables of this revision (``only_missing``: those not there; revision 0003's
    downgrade gives the gateway's history back the participants' tables this way)."""
    existing = set(sa.inspect(op.get_bind()).get_table_names()) if only_missing else set()

    def create_table(name: str, *args: object) -> None:
        if name not in existing:
            op.create_table(name, *args)

    def create_index(name: str, table: str, columns: list[str]) -> None:
        if table not in existing:
            op.create_index(name, table, columns)

    create_table(
        "products",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("price_cents", sa.BigInteger(), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("shipped", sa.Integer(), nullable=False),
        sa.CheckConstraint("stock >= 0", name=op.f("ck_products_stock_nonneg")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_products_reserved_nonneg")),
        sa.CheckConstraint("shipped >= 0", name=op.f("ck_products_shipped_nonneg")),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_products_price_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    create_table(
        "accounts",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("balance_cents", sa.BigInteger(), nullable=False),
        *_address(),
        sa.CheckConstraint("balance_cents >= 0", name=op.f("ck_accounts_balance_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    create_table(
        "orders",
        sa.Column("id", ID, nullable=False),
        sa.Column("customer_id", ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.Column("payment_method", sa.String(32), nullable=False),
        sa.Column("saga_id", ID, nullable=True),
        sa.Column("idempotency_key", KEY, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        *_address(),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name=op.f("ck_orders_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_orders_idempotency_key")),
    )
    create_index(op.f("ix_orders_customer_id"), "orders", ["customer_id"])
    create_index(op.f("ix_orders_saga_id"), "orders", ["saga_id"])
    create_index(op.f("ix_orders_created_at"), "orders", ["created_at"])
    create_index(op.f("ix_orders_status_created_at"), "orders", ["status", "created_at"])
    create_table(
        "order_items",
        sa.Column("order_id", ID, nullable=False),
        sa.Column("line_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("product_id", ID, nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_cents", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_order_items_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_order_items_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("order_id", "line_no", name=op.f("pk_order_items")),
    )
    create_table(
        "payments",
        sa.Column("idempotency_key", KEY, nullable=False),
        sa.Column("order_id", ID, nullable=True),
        sa.Column("account_id", ID, nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("compensation_key", KEY, nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('captured', 'refunded', 'void')", name=op.f("ck_payments_status")
        ),
        sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_payments_amount_nonneg")),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_payments")),
    )
    create_index(op.f("ix_payments_order_id"), "payments", ["order_id"])
    create_table(
        "inventory_reservations",
        sa.Column("idempotency_key", KEY, nullable=False),
        sa.Column("order_id", ID, nullable=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("compensation_key", KEY, nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('reserved', 'released', 'cancelled')",
            name=op.f("ck_inventory_reservations_status"),
        ),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_inventory_reservations")),
    )
    create_index(op.f("ix_inventory_reservations_order_id"), "inventory_reservations", ["order_id"])
    create_table(
        "shipments",
        sa.Column("idempotency_key", KEY, nullable=False),
        sa.Column("order_id", ID, nullable=True),
        sa.Column("courier", sa.String(100), nullable=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("address", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("compensation_key", KEY, nullable=True),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('created', 'cancelled', 'void')", name=op.f("ck_shipments_status")
        ),
        sa.PrimaryKeyConstraint("idempotency_key", name=op.f("pk_shipments")),
    )
    create_index(op.f("ix_shipments_order_id"), "shipments", ["order_id"])


def downgrade() -> None:
    op.drop_table("shipments")
    op.drop_table("inventory_reservations")
    op.drop_table("payments")
    op.drop_table("order_items")
    op.drop_table("orders")
    op.drop_table("accounts")
    op.drop_table("products")
