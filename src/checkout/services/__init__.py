"""The checkout's participants as services of their own: payment, inventory and shipping.

Each owns its database (its own SQLite file by default, or a PostgreSQL URL/schema), its tables
and its Alembic history (``checkout/services/<name>/migrations``, with an ``alembic.ini`` next
to it), and serves its HTTP API (health, its reads, docs) on its port: 8001, 8002, 8003. Saga
commands reach it over HTTP or RabbitMQ (``checkout participant <name> --transport ...``).
Embedded (``make run``) the same operations run in the gateway's process on one file.

What stays true across the three databases (checked by the tests, readable over the APIs):

* payment: ``sum(balances) + sum(captured payments)`` is constant;
* inventory, per product: ``stock + reserved`` is constant, and ``reserved`` is the sum of the
  live reservations' units;
* shipping, per product: ``shipped`` is the sum of the created shipments' units;
* across them, per product: ``shipped <= reserved`` always (an order ships only after its
  reservation, its shipment is cancelled before its reservation is released), and once every
  saga has finished ``shipped == reserved``: a completed order holds both, a compensated one
  neither. So ``stock + (reserved - shipped) + shipped`` is the demo's units, per product.
"""

from __future__ import annotations

from checkout.services.specs import SERVICES, ServiceSpec, service_url

__all__ = ["SERVICES", "ServiceSpec", "service_url"]
