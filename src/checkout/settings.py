"""Configuration of the checkout service, read from ``SAGAWAY_*`` environment variables.

Users configure the service with plain URLs (``postgresql://user@host/db``, ``sqlite:///x.db``),
the way every other tool spells them; the async driver SQLAlchemy needs is an implementation
detail, chosen by :func:`async_database_url` so nobody has to know about ``+asyncpg``.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

DEFAULT_DATABASE_URL = "sqlite:///./sagaway.db"

# Drivers that work under SQLAlchemy's asyncio extension; anything else is swapped for the default.
_ASYNC_DRIVERS = {
    "sqlite": ("aiosqlite",),
    "postgresql": ("asyncpg", "psycopg"),
}
_DEFAULT_DRIVER = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_BACKEND_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql"}


class Settings(BaseSettings):
    """Everything the service needs to start. One SQLite file holds both databases by default,
    so a fresh clone runs with no server at all."""

    model_config = SettingsConfigDict(env_prefix="SAGAWAY_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL  # the shop: products, accounts, orders...
    store_url: str = DEFAULT_DATABASE_URL  # the saga log
    demo: bool = True  # load demo data on first start; allow POST /reset
    host: str = "127.0.0.1"
    port: int = 8000
    lease_seconds: float = 5.0
    worker_id: str | None = None

    @property
    def async_database_url(self) -> str:
        return async_database_url(self.database_url)


def async_database_url(url: str | URL) -> str:
    """Return ``url`` with an asyncio driver: ``postgresql://`` -> ``postgresql+asyncpg://``,
    ``sqlite://`` -> ``sqlite+aiosqlite://``. An async driver already named is kept.

    Raises ``ValueError`` for a backend the shop database does not support, so a typo in
    ``SAGAWAY_DATABASE_URL`` fails at start with a readable message.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    backend = _BACKEND_ALIASES.get(backend, backend)
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:// or postgresql://"
        )
    driver = parsed.get_driver_name() if "+" in parsed.drivername else ""
    if driver not in _ASYNC_DRIVERS[backend]:
        driver = _DEFAULT_DRIVER[backend]
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def is_sqlite(url: str | URL) -> bool:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.get_backend_name() == "sqlite"
