"""Alembic environment of the payment service's database; see :mod:`checkout.migrating`.
``alembic -c src/checkout/services/payment/alembic.ini upgrade head`` migrates
``SAGAWAY_DATABASE_URL`` or ``sqlite:///./payment.db``."""

from checkout.db import PAYMENT
from checkout.migrating import run_env

run_env(PAYMENT, "sqlite:///./payment.db")
