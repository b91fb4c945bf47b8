"""The checkout's participants: services that do one thing each and can undo it.

Every operation takes the saga step's idempotency key and dedupes on it (the key is the
primary key of the participant's ledger table), so a retried or recovered step never applies
twice. Compensations take the forward action's key plus their own, undo exactly once, and
leave a tombstone when the action never happened so a late action becomes a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from checkout.db import Database
from checkout.dbexec import EngineExecutor, ShopExecutor
from checkout.participants.inventory import InventoryService
from checkout.participants.orders import OrderService, new_order_id, saga_input
from checkout.participants.payment import PaymentService
from checkout.participants.shipping import ShippingService
from checkout.participants.shop import Prevalidated, ShopService, ShopTotals


@dataclass(frozen=True, slots=True)
class GatewayParticipants:
    """What the API calls: the shop's reads (this database, or the services' APIs:
    :class:`checkout.remote.RemoteShop`) and the orders (always the gateway's database)."""

    shop: ShopService
    orders: OrderService


@dataclass(frozen=True, slots=True)
class CheckoutParticipants(GatewayParticipants):
    """Everything the checkout saga and the API call, built on one shop database."""

    inventory: InventoryService
    payment: PaymentService
    shipping: ShippingService

    @classmethod
    def from_database(
        cls, db: Database, executor: ShopExecutor | None = None
    ) -> CheckoutParticipants:
        """Participants running their operations with ``executor`` (default: one transaction
        per operation on ``db``'s engine; see :func:`checkout.dbexec.open_executor`)."""
        return cls.from_executor(executor or EngineExecutor(db))

    @classmethod
    def from_executor(cls, executor: ShopExecutor) -> CheckoutParticipants:
        prevalidated = Prevalidated()  # an order's validation, from its creation to its saga
        return cls(
            shop=ShopService(executor, prevalidated),
            orders=OrderService(executor, prevalidated=prevalidated),
            inventory=InventoryService(executor),
            payment=PaymentService(executor),
            shipping=ShippingService(executor),
        )


__all__ = [
    "CheckoutParticipants",
    "GatewayParticipants",
    "InventoryService",
    "OrderService",
    "PaymentService",
    "ShippingService",
    "ShopService",
    "ShopTotals",
    "new_order_id",
    "saga_input",
]
