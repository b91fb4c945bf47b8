"""What distinguishes the three services: name, port, history, demo data, reset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from checkout.db import INVENTORY, PAYMENT, SHIPPING, History
from checkout.participants import shop


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    port: int
    history: History
    load_demo: Callable[[Connection], bool]  # its share of the demo data (True: inserted)
    reset: Callable[[Connection], None]  # back to its share of the demo starting point

    @property
    def default_database_url(self) -> str:
        return f"sqlite:///./{self.name}.db"

    @property
    def url_variable(self) -> str:
        """Where the gateway finds it: ``SAGAWAY_PAYMENT_URL``..."""
        return f"SAGAWAY_{self.name.upper()}_URL"


def _nothing(conn: Connection) -> bool:
    return False


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("payment", 8001, PAYMENT, shop.load_demo_accounts, shop.reset_payment),
        ServiceSpec("inventory", 8002, INVENTORY, shop.load_demo_products, shop.reset_inventory),
        ServiceSpec("shipping", 8003, SHIPPING, _nothing, shop.reset_shipping),
    )
}


def service_url(name: str, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or SERVICES[name].port}"
