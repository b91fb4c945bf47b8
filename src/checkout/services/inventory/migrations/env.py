"""Alembic environment of the inventory service's database; see :mod:`checkout.migrating`.
``alembic -c src/checkout/services/inventory/alembic.ini upgrade head`` migrates
``SAGAWAY_DATABASE_URL`` or ``sqlite:///./inventory.db``."""

from checkout.db import INVENTORY
from checkout.migrating import run_env

run_env(INVENTORY, "sqlite:///./inventory.db")
