"""Seed 004: order, payment and delivery services as a choreography (``services``), or one
orchestrated saga (``orchestration``), run by ``runtime.OrderFlow``; see the README's "Pay
later: seed 004".

Kept free of imports: ``checkout.db`` imports ``checkout.orderflow.tables`` to declare the
pay-later tables on the shop's metadata, and must not pull the runtime in with it.
"""
