"""Seed 004's tables: each choreographed service's state, inbox and event outbox.

Each service owns its tables (order: ``flow_orders``; payment: ``flow_payments``; delivery:
``flow_deliveries``) and has its own inbox and outbox, so it could move to a database of its
own: with separate services (``SAGAWAY_TRANSPORT=http|rabbitmq``) the order's live in the
gateway's database, the payment's in the payment service's and the delivery's in the shipping
service's. Each is created by the Alembic history of its owner (gateway ``0004``, payment
``p0003``, shipping ``s0003``); embedded (``make run``) all histories run on the shop database,
so they sit next to the accounts the payment service debits. They are declared on the shop's
``Base.metadata`` so the migrations-match-the-models checks see them.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Column, Float, String, Table, Text

from checkout.db import Base
from sagaway.choreography import outbox_table
from sagaway.participant import inbox_table

FLOW = Base.metadata


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

# Which history owns which tables (``checkout.db.History.tables``).
ORDER_TABLES = ("flow_orders", "flow_order_inbox", "flow_order_outbox")
PAYMENT_TABLES = ("flow_payments", "flow_payment_inbox", "flow_payment_outbox")
DELIVERY_TABLES = ("flow_deliveries", "flow_delivery_inbox", "flow_delivery_outbox")
