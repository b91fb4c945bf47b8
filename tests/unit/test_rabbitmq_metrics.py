"""The RabbitMQ consumers' counters as Prometheus metrics (no broker needed: the counters are
plain ints a consumer increments)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sagaway.transport.rabbitmq import DeliveryCollector, DeliveryStats


def test_counters_are_exposed_per_queue_and_outcome() -> None:
    replies = DeliveryStats(handled=7, requeued=2, dead_lettered=1, reconnects=3)
    inventory = DeliveryStats(handled=5)
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(saga_replies=replies, inventory=inventory))
    text = generate_latest(registry).decode()
    assert 'sagaway_rabbitmq_deliveries_total{outcome="handled",queue="saga_replies"} 7.0' in text
    assert 'sagaway_rabbitmq_deliveries_total{outcome="requeued",queue="saga_replies"} 2.0' in text
    assert (
        'sagaway_rabbitmq_deliveries_total{outcome="dead_lettered",queue="saga_replies"} 1.0'
        in text
    )
    assert 'sagaway_rabbitmq_deliveries_total{outcome="handled",queue="inventory"} 5.0' in text
    assert 'sagaway_rabbitmq_reconnects_total{queue="saga_replies"} 3.0' in text
    replies.dead_lettered += 1  # read at scrape time
    assert (
        'sagaway_rabbitmq_deliveries_total{outcome="dead_lettered",queue="saga_replies"} 2.0'
        in generate_latest(registry).decode()
    )
