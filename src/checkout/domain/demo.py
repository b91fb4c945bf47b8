"""Demo data of DESIGN.md §5: the catalog, accounts and couriers every scenario starts from.

Kept as plain constants in the domain so tests, the CLI's ``demo`` command and ``POST /reset``
all agree on the exact starting point (the e2e tests assert exact balance and stock deltas).
"""

from __future__ import annotations

from dataclasses import dataclass

from checkout.domain.models import Address


@dataclass(frozen=True, slots=True)
class DemoProduct:
    id: str
    name: str
    price_cents: int
    stock: int


@dataclass(frozen=True, slots=True)
class DemoAccount:
    id: str
    name: str
    balance_cents: int
    address: Address


DEMO_PRODUCTS: tuple[DemoProduct, ...] = (
    DemoProduct("product_1", "Laptop stand", 5_000, 100),
    DemoProduct("product_2", "USB-C cable", 2_000, 50),
    DemoProduct("product_3", "Mechanical keyboard", 10_000, 25),
)

DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount(
        "user_1",
        "Alice Martin",
        100_000,
        Address(
            street="12 Queen St W",
            city="Toronto",
            province="ON",
            postal_code="M5H 2N2",
            country="CA",
        ),
    ),
    DemoAccount(
        "user_2",
        "Bruno Tremblay",
        50_000,
        Address(
            street="275 Rue Notre-Dame E",
            city="Montreal",
            province="QC",
            postal_code="H2Y 1C6",
            country="CA",
        ),
    ),
    DemoAccount(
        "user_3",
        "Chloe Nowhere",
        20_000,
        # Undeliverable on purpose: the "shipping fails, payment refunded" scenario.
        Address(
            street="1 Nowhere Rd",
            city="Nowhere",
            province="NU",
            postal_code="00000",
            country="CA",
        ),
    ),
)

# Couriers by (province, city), then by province, then the national default.
COURIERS_BY_CITY: dict[tuple[str, str], str] = {
    ("ON", "Toronto"): "Toronto Bike Couriers",
    ("QC", "Montreal"): "Livraison Montreal",
    ("BC", "Vancouver"): "Pacific Express",
}
COURIERS_BY_PROVINCE: dict[str, str] = {
    "ON": "Ontario Parcel",
    "QC": "Quebec Colis",
    "BC": "West Coast Freight",
    "AB": "Prairie Post",
}
DEFAULT_COURIER = "Canada Post"


def demo_total_money_cents() -> int:
    """Sum of all demo balances: the money invariant's constant on a fresh demo database."""
    return sum(a.balance_cents for a in DEMO_ACCOUNTS)


def demo_total_units() -> dict[str, int]:
    """Units per product on a fresh demo database (stock + reserved + shipped stays equal)."""
    return {p.id: p.stock for p in DEMO_PRODUCTS}
