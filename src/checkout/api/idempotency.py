"""The fingerprint an ``Idempotency-Key`` is bound to.

A key names one request: its route and what it asks for, the customer included. The order
recorded under the key stores the fingerprint of the request that recorded it; a later request
with the key replays that order only if its fingerprint is the same, else it is refused (422)
without a word about the order (:class:`checkout.service.IdempotencyKeyReused`). So a key
scopes itself to its customer: another client who sends the key, even guessing it, with any
other customer, items or address learns nothing.

The fingerprint is of the request as understood, not of its bytes: ``user_id`` and
``customer_id``, the one-item short form and ``items``, key order and whitespace do not make
two requests different; any field with an effect on the order does.
"""

from __future__ import annotations

import hashlib
import json

from checkout.api.schemas import OrderRequest

__all__ = ["request_fingerprint"]


def request_fingerprint(route: str, body: OrderRequest) -> str:
    """sha256 (hex) of the canonical form of ``body`` sent to ``route``."""
    address = body.shipping_address
    canonical = {
        "route": route,
        "customer_id": body.customer,
        "items": [[line.product_id, line.quantity] for line in body.lines()],
        "shipping_address": None if address is None else address.to_domain().model_dump(),
        "payment_method": body.payment_method,
        "amount_cents": body.amount_cents,
        "checkout": body.checkout,
        "order_id": body.order_id,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
