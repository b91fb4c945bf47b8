"""Configuration of the checkout service, read from ``SAGAWAY_*`` environment variables.

Users configure the service with plain URLs (``postgresql://user@host/db``, ``sqlite:///x.db``),
the way every other tool spells them; the async driver SQLAlchemy needs is an implementation
detail, chosen by :func:`async_database_url` so nobody has to know about ``+asyncpg``.

A PostgreSQL URL may name a schema, as the saga log's does (``postgresql://host/db?schema=shop``):
:func:`database_schema` reads it and :func:`async_database_url` leaves it out of the URL the
driver sees (the tables go there through ``search_path``, see
:func:`checkout.bootstrap.open_shop_database`). So one URL can serve as both
``SAGAWAY_DATABASE_URL`` and ``SAGAWAY_STORE_URL``.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

DEFAULT_DATABASE_URL = "sqlite:///./sagaway.db"
MIN_ADMIN_TOKEN_CHARS = 16

# Drivers that work under SQLAlchemy's asyncio extension; anything else is swapped for the default.
_ASYNC_DRIVERS = {
    "sqlite": ("aiosqlite",),
    "postgresql": ("asyncpg", "psycopg"),
}
_DEFAULT_DRIVER = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_BACKEND_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql"}
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Settings(BaseSettings):
    """Everything the service needs to start. One SQLite file holds both databases by default,
    so a fresh clone runs with no server at all."""

    model_config = SettingsConfigDict(env_prefix="SAGAWAY_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL  # the shop: products, accounts, orders...
    # How the saga reaches payment, inventory and shipping: in this process, on the shop
    # database (``inprocess``, the default: one process, one file), or as separate services
    # (``checkout participant ...``) over HTTP or RabbitMQ, each with its own database.
    transport: Literal["inprocess", "http", "rabbitmq"] = "inprocess"
    # Where the gateway finds the services' APIs (reads; saga commands too over HTTP).
    payment_url: str = "http://127.0.0.1:8001"
    inventory_url: str = "http://127.0.0.1:8002"
    shipping_url: str = "http://127.0.0.1:8003"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1/"
    # Where a service finds the gateway: seed 004's domain events travel through it over HTTP.
    gateway_url: str = "http://127.0.0.1:8000"
    # Seed 004 (POST /orders/create_order): how its services' domain events travel (default:
    # RabbitMQ when the transport is, else in-process), and how long a payment may wait for
    # the customer's confirmation before the order is cancelled.
    events: Literal["inprocess", "rabbitmq"] | None = None
    payment_timeout_seconds: float = Field(900.0, gt=0)
    store_url: str = DEFAULT_DATABASE_URL  # the saga log
    demo: bool = True  # load demo data on first start; allow POST /reset
    host: str = "127.0.0.1"
    port: int = 8000
    lease_seconds: float = 5.0
    # Finished sagas (succeeded or compensated, not pinned) older than this many days are
    # pruned from the saga log by the workers; unset: kept forever. Keep it longer than any
    # client retries a request: a pruned saga's idempotency key is forgotten with it.
    retention_days: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    worker_id: str | None = None
    # FastAPI's native OpenTelemetry (spans and metrics per request through the global
    # providers). Off by default: even with no provider configured, FastAPI looks the three
    # providers up on every request (~3% of the event loop's CPU under load).
    otel: bool = False
    # Prometheus metrics of the engine and the HTTP API (GET /metrics); measured within a few
    # percent of the engine's CPU (benchmarks/observability_cost.py).
    metrics: bool = True
    # `checkout worker` has no HTTP API: with this set it serves /metrics on this port.
    metrics_port: int | None = None
    # Log lines (one per saga start, retry, failure, compensation, finish): text or JSON lines.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Operator actions (retry, cancel, reset) and reads of other customers' data need
    # `Authorization: Bearer <this>`; unset, they are open in demo mode and refused otherwise.
    admin_token: SecretStr | None = None
    # uvicorn's defences against slow or greedy clients (`checkout serve`); see the README.
    # Idle keep-alive connections are closed after this. Longer than the idle expiry of the
    # client pools in front (httpx 5 s, aiohttp 15 s: the gateway's own client to the services;
    # nginx upstreams and cloud load balancers 60 s): when the server closes first, a request the
    # client sends on that connection meanwhile dies unanswered (benchmarks/keepalive_race.py).
    keep_alive_seconds: int = 75
    max_connections: int | None = 1000  # open connections (or requests in flight); beyond: 503

    @field_validator("admin_token", mode="before")
    @classmethod
    def _token(cls, value: object) -> object:
        if value is None or value == "":
            return None  # SAGAWAY_ADMIN_TOKEN= (empty) means no token
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(secret, str) and len(secret) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(f"use at least {MIN_ADMIN_TOKEN_CHARS} characters")
        return value

    # Connection pools of one process on PostgreSQL: the shop's (SQLAlchemy: db_pool_size kept,
    # up to db_max_overflow more in bursts) and the saga log's (store_pool_size, unless the
    # store URL names ?pool_size=), plus the saga log's LISTEN connection. Every process
    # (API or worker) holds up to db_pool_size + db_max_overflow + store_pool_size + 1: keep
    # processes x that below the server's max_connections (README, "Scaling out").
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    store_pool_size: int = Field(default=4, ge=2)

    @property
    def service_urls(self) -> dict[str, str]:
        return {
            "payment": self.payment_url,
            "inventory": self.inventory_url,
            "shipping": self.shipping_url,
        }

    @property
    def async_database_url(self) -> str:
        return async_database_url(self.database_url)

    @property
    def saga_log_url(self) -> str:
        """``store_url`` with ``store_pool_size`` applied (PostgreSQL, when the URL does not
        choose its own ``?pool_size=``)."""
        return with_pool_size(self.store_url, self.store_pool_size)

    @property
    def connections_per_process(self) -> int:
        """The most PostgreSQL connections one process of this configuration opens."""
        return self.db_pool_size + self.db_max_overflow + self.store_pool_size + 1


def with_pool_size(url: str, size: int) -> str:
    """A PostgreSQL saga-log ``url`` with ``pool_size=size`` unless it sets one itself."""
    parts = urlsplit(url)
    if parts.scheme.partition("+")[0] not in ("postgresql", "postgres"):
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "pool_size" for key, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("pool_size", str(size))])))


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
    database_schema(parsed)  # validates ?schema=
    parsed = parsed.difference_update_query(["schema"])
    return parsed.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)


def database_schema(url: str | URL) -> str | None:
    """The ``?schema=`` of a PostgreSQL shop URL (None: the server's default ``search_path``).

    Raises ``ValueError`` for a schema on SQLite or a name that is not a plain identifier."""
    parsed = make_url(url) if isinstance(url, str) else url
    schema = parsed.query.get("schema")
    if schema is None:
        return None
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"bad schema {schema!r} in the database URL: letters, digits and _")
    if parsed.get_backend_name() == "sqlite":
        raise ValueError("?schema= in the database URL is only supported on PostgreSQL")
    return schema


def is_sqlite(url: str | URL) -> bool:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.get_backend_name() == "sqlite"
