"""Pure business rules of checkout: money, pricing, address validation, courier assignment.

No I/O here, so every rule is tested in microseconds and the participants stay thin: they load
rows, call these, and write the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from checkout.domain.models import (
    Address,
    InvalidShippingAddress,
    OrderLine,
    PricedLine,
    ProductNotFound,
)

UNDELIVERABLE_POSTAL_CODES = frozenset({"00000"})
REQUIRED_ADDRESS_FIELDS = ("street", "city", "postal_code", "country")
CENT = Decimal("0.01")


# Money as integer cents.
#
# Floats cannot represent 0.10 exactly, so sums of prices drift and two balances that should be
# equal are not. Every amount inside the service is an ``int`` of cents; ``Decimal`` with two
# places is the only other form, used at the API edge. Floats are refused outright rather than
# rounded, so a float that sneaks in is a bug found in a test, not a cent lost in production.


def to_cents(amount: Decimal | int | str) -> int:
    """Convert an amount in currency units (``Decimal("12.34")``, ``"12.34"``, ``12``) to cents.

    Raises ``TypeError`` for floats and ``ValueError`` for sub-cent precision (``"0.001"``) or
    non-numbers: silently rounding someone's money is worse than rejecting the request.
    """
    if isinstance(amount, (bool, float)):
        raise TypeError("money must be Decimal, int or str, never float or bool")
    if isinstance(amount, int):
        return amount * 100
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"not an amount of money: {amount!r}")
    cents = value * 100
    if cents != cents.to_integral_value():
        raise ValueError(f"amount has more than two decimal places: {amount!r}")
    return int(cents)


def from_cents(cents: int) -> Decimal:
    """Cents to a ``Decimal`` with exactly two places: ``1050 -> Decimal("10.50")``."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError("cents must be an int")
    return (Decimal(cents) / 100).quantize(CENT, rounding=ROUND_HALF_EVEN)


def format_money(cents: int) -> str:
    """``1050 -> "10.50"``: for logs, the CLI and error messages."""
    return f"{from_cents(cents):.2f}"


def merge_lines(items: Iterable[OrderLine]) -> list[OrderLine]:
    """One line per product, sorted by product id.

    Sorting matters beyond tidiness: every transaction that locks several product rows locks
    them in the same order, so two concurrent orders cannot deadlock on PostgreSQL.
    """
    totals: dict[str, int] = {}
    for item in items:
        totals[item.product_id] = totals.get(item.product_id, 0) + item.quantity
    return [OrderLine(product_id=pid, quantity=q) for pid, q in sorted(totals.items())]


def price_lines(items: Iterable[OrderLine], prices: Mapping[str, int]) -> list[PricedLine]:
    """Price each line from the catalog (``prices``: product id -> cents).

    Prices always come from the catalog, never from the client, so nobody can buy at their own
    price. Raises :class:`ProductNotFound` for a product the catalog does not have.
    """
    lines = []
    for item in items:
        if item.product_id not in prices:
            raise ProductNotFound(item.product_id)
        lines.append(
            PricedLine(
                product_id=item.product_id,
                quantity=item.quantity,
                unit_price_cents=prices[item.product_id],
            )
        )
    return lines


def order_total(lines: Iterable[PricedLine]) -> int:
    """Sum of unit price * quantity over the lines, in cents."""
    return sum(line.unit_price_cents * line.quantity for line in lines)


def address_problems(address: Address | None) -> list[str]:
    """Why ``address`` cannot be delivered to (empty when it can)."""
    if address is None:
        return ["no shipping address"]
    problems = [
        f"missing {name}"
        for name in REQUIRED_ADDRESS_FIELDS
        if not (getattr(address, name) or "").strip()
    ]
    postal = (address.postal_code or "").strip()
    if postal in UNDELIVERABLE_POSTAL_CODES:
        problems.append(f"undeliverable postal code {postal}")
    return problems


def validate_address(address: Address | None) -> Address:
    """Return ``address`` if it is deliverable, else raise :class:`InvalidShippingAddress`."""
    problems = address_problems(address)
    if problems or address is None:
        raise InvalidShippingAddress("; ".join(problems))
    return address


def assign_courier(
    address: Address,
    by_city: Mapping[tuple[str, str], str],
    by_province: Mapping[str, str],
    default: str,
) -> str:
    """The courier that delivers to ``address``: a city-specific courier first, then the
    province's, then the national default. Matching ignores case and surrounding spaces."""
    province = (address.province or "").strip().upper()
    city = (address.city or "").strip().lower()
    for (p, c), courier in by_city.items():
        if p.upper() == province and c.lower() == city:
            return courier
    for p, courier in by_province.items():
        if p.upper() == province:
            return courier
    return default
