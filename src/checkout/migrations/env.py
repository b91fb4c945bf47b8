"""Alembic environment of the gateway's database (orders); see :mod:`checkout.migrating`.
``alembic.ini`` at the repository root points here; the default database is
``SAGAWAY_DATABASE_URL`` or ``sqlite:///./sagaway.db``."""

from checkout.db import GATEWAY
from checkout.migrating import run_env
from checkout.settings import DEFAULT_DATABASE_URL

run_env(GATEWAY, DEFAULT_DATABASE_URL)
