"""The checkout service: an e-commerce checkout whose every order is a durable sagaway saga.

Layout: ``domain`` (pure rules), ``db`` + ``migrations`` (the shop database), ``participants``
(payment, inventory, shipping: idempotent actions and compensations), ``sagas`` (the checkout
saga), ``settings`` (``SAGAWAY_*`` configuration), ``bootstrap`` (the composition root),
``tracking`` (order status mirrors its saga), ``service`` (place/check out/read orders), ``api``
(the FastAPI app) and ``cli`` (``checkout serve|worker|demo|migrate``).
"""
