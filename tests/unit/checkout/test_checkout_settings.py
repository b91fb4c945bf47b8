"""Settings: SAGAWAY_* environment variables and the async driver chosen for a plain URL."""

from __future__ import annotations

import pytest

from checkout.settings import Settings, async_database_url, database_schema, is_sqlite


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "STORE_URL", "DEMO", "HOST", "PORT", "LEASE_SECONDS", "WORKER_ID"):
        monkeypatch.delenv(f"SAGAWAY_{name}", raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///./sagaway.db"
    assert settings.store_url == settings.database_url
    assert settings.demo is True
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.lease_seconds == 5.0
    assert settings.worker_id is None
    assert settings.async_database_url == "sqlite+aiosqlite:///./sagaway.db"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAWAY_DATABASE_URL", "postgresql://root@db/shop")
    monkeypatch.setenv("SAGAWAY_STORE_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("SAGAWAY_DEMO", "false")
    monkeypatch.setenv("SAGAWAY_PORT", "9000")
    monkeypatch.setenv("SAGAWAY_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("SAGAWAY_WORKER_ID", "worker-1")
    settings = Settings()
    assert settings.async_database_url == "postgresql+asyncpg://root@db/shop"
    assert settings.store_url == "redis://localhost:6379/0"
    assert settings.demo is False
    assert settings.port == 9000
    assert settings.lease_seconds == 2.5
    assert settings.worker_id == "worker-1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///./sagaway.db", "sqlite+aiosqlite:///./sagaway.db"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://user@host/db", "postgresql+asyncpg://user@host/db"),
        ("postgres://user:pw@host:5433/db", "postgresql+asyncpg://user:pw@host:5433/db"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_async_database_url(url: str, expected: str) -> None:
    assert async_database_url(url) == expected


def test_unsupported_backends_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        async_database_url("mysql://u@h/d")


def test_is_sqlite() -> None:
    assert is_sqlite("sqlite:///x.db")
    assert not is_sqlite("postgresql://u@h/d")


def test_schema_of_a_postgresql_url_is_left_out_of_the_driver_url() -> None:
    url = "postgresql://u@h/d?schema=shop_1&sslmode=disable"
    assert database_schema(url) == "shop_1"
    assert async_database_url(url) == "postgresql+asyncpg://u@h/d?sslmode=disable"
    assert database_schema("postgresql://u@h/d") is None


@pytest.mark.parametrize(
    "url",
    ["sqlite:///x.db?schema=shop", "postgresql://u@h/d?schema=a-b", "postgresql://h/d?schema=1x"],
)
def test_bad_schemas_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        async_database_url(url)


def test_pool_sizes_come_from_settings_with_small_defaults() -> None:
    settings = Settings(store_url="postgresql://u@h/d?schema=log")
    assert (settings.db_pool_size, settings.db_max_overflow, settings.store_pool_size) == (5, 0, 4)
    assert settings.connections_per_process == 10
    assert settings.saga_log_url == "postgresql://u@h/d?schema=log&pool_size=4"
    own = Settings(store_url="postgresql://u@h/d?pool_size=8", store_pool_size=2)
    assert own.saga_log_url == "postgresql://u@h/d?pool_size=8"  # the URL's own choice wins
    assert Settings(store_url="sqlite:///x.db").saga_log_url == "sqlite:///x.db"
    assert Settings(store_url="redis://h/0").saga_log_url == "redis://h/0"
