"""Alembic environment of the shipping service's database; see :mod:`checkout.migrating`.
``alembic -c src/checkout/services/shipping/alembic.ini upgrade head`` migrates
``SAGAWAY_DATABASE_URL`` or ``sqlite:///./shipping.db``."""

from checkout.db import SHIPPING
from checkout.migrating import run_env

run_env(SHIPPING, "sqlite:///./shipping.db")
