"""The saga input of an order ``NewCheckout`` just recorded: built from the request's own lines,
it is ``saga_input`` of the recorded order, the same value and the same stored JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from checkout.domain.models import Address, OrderInfo, OrderLine, OrderStatus, PricedLine
from checkout.participants import orders, saga_input


def _recorded(items: list[OrderLine], address: Address | None) -> OrderInfo:
    now = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)
    return OrderInfo(
        id="ord_1",
        customer_id="user_1",
        status=OrderStatus.PROCESSING,
        total_cents=0,
        items=[
            PricedLine(product_id=i.product_id, quantity=i.quantity, unit_price_cents=n)
            for n, i in enumerate(items)
        ],
        shipping_address=address,
        payment_method="card",
        saga_id="s-1",
        idempotency_key=None,
        error=None,
        created_at=now,
        updated_at=now,
    )


def test_the_input_of_a_recorded_order_is_its_saga_input() -> None:
    items = [
        OrderLine(product_id="product_2", quantity=3),
        OrderLine(product_id="product_1", quantity=1),
        OrderLine(product_id="product_2", quantity=1),
    ]
    for address in (None, Address(street="1 Main St", country="CA")):
        order = _recorded(items, address)
        made = orders._recorded_input(order, items)
        assert made == saga_input(order)
        assert made.model_dump_json() == saga_input(order).model_dump_json()
        assert all(a is b for a, b in zip(made.items, items, strict=True))  # not copied


def test_lines_of_another_class_are_copied() -> None:
    class Line(OrderLine):
        pass

    items: list[OrderLine] = [OrderLine(product_id="product_1", quantity=1)]
    items.append(Line(product_id="product_2", quantity=2))
    order = _recorded(items, None)
    made = orders._recorded_input(order, items)
    assert made == saga_input(order)
    assert [type(line) for line in made.items] == [OrderLine, OrderLine]
