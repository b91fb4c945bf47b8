"""Seed 004's tables: each choreographed service's state, inbox and event outbox.

Each service owns its tables (order: ``flow_orders``; payment: ``flow_payments``; delivery:
``flow_deliveries``) and has its own inbox and outbox, so it could move to a database of its
own without a change. Embedded (``make run``) they live in the shop database, next to the
accounts the payment service debits. ``create_tables`` creates what is missing.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Column, Float, MetaData, String, Table, Text
from sqlalchemy.engine import Connection

from sagaway.choreography import outbox_table
from sagaway.participant import inbox_table

FLOW = MetaData()


class FlowOrderStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    CONFIRMED = "confirmed"  # paid; a delivery is being arranged
    COMPLETED = "completed"  # a courier has it
    CANCELLED = "cancelled"


class FlowPaymentStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    CANCELLED = "cancelled"


ORDERS = Table(
    "flow_orders",
    FLOW,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("items", JSON, nullable=False),
    Column("shipping_address", JSON, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("status", String(32), nullable=False),
    Column("flow", String(32), nullable=False),
    Column("payment_id", String(64), nullable=False, unique=True),
    # The saga that shows the order's timeline: the monitor's (id = the order's) for a
    # choreography, the order-process saga's for an orchestration.
    Column("saga_id", String(64)),
    Column("courier", String(100)),
    Column("reason", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

PAYMENTS = Table(
    "flow_payments",
    FLOW,
    Column("id", String(64), primary_key=True),
    Column("order_id", String(64), nullable=False, unique=True),
    Column("account_id", String(64), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("status", String(32), nullable=False),
    Column("flow", String(32), nullable=False, default="choreography"),
    # The capture's key in the shop's payments table (``checkout.participants.payment``): the
    # money moves there, so the shop-wide invariant balances + captured payments holds.
    Column("charge_key", String(255), nullable=False),
    Column("refunded", String(8), nullable=False, default="no"),
    Column("reason", Text),
    Column("expires_at", Float, nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

DELIVERIES = Table(
    "flow_deliveries",
    FLOW,
    Column("order_id", String(64), primary_key=True),
    Column("courier", String(100)),
    Column("status", String(32), nullable=False),  # assigned | unassigned
    Column("reason", Text),
    Column("created_at", Float, nullable=False),
)

INBOXES = {
    name: inbox_table(FLOW, f"flow_{name}_inbox") for name in ("order", "payment", "delivery")
}
OUTBOXES = {
    name: outbox_table(FLOW, f"flow_{name}_outbox") for name in ("order", "payment", "delivery")
}


def create_tables(conn: Connection) -> None:
    FLOW.create_all(conn, checkfirst=True)
