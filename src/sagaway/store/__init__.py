"""Saga log backends, chosen from a URL; each adapter is imported only when its URL is used."""

from __future__ import annotations

from importlib import import_module

from sagaway.errors import SagawayError
from sagaway.store.base import (
    OutboxStore,
    Page,
    PruningStore,
    SagaStore,
    TakingStore,
    TransactionalStore,
)

__all__ = [
    "OutboxStore",
    "Page",
    "PruningStore",
    "SagaStore",
    "TakingStore",
    "TransactionalStore",
    "open_store",
]

_BACKENDS = {
    "memory": ("sagaway.store.memory", "MemoryStore"),
    "sqlite": ("sagaway.store.sqlite", "SQLiteStore"),
    "postgresql": ("sagaway.store.postgres", "PostgresStore"),
    "postgres": ("sagaway.store.postgres", "PostgresStore"),
    "redis": ("sagaway.store.redis", "RedisStore"),
    "rediss": ("sagaway.store.redis", "RedisStore"),
}


def open_store(url: str) -> SagaStore:
    """Build (not yet open) the store for ``url``: ``memory://``, ``sqlite:///path.db``,
    ``postgresql://user@host/db``, ``redis://host:6379/0``."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    if scheme not in _BACKENDS:
        known = ", ".join(sorted(f"{s}://" for s in _BACKENDS))
        raise SagawayError(f"unsupported saga store URL {url!r}: use one of {known}")
    module_name, class_name = _BACKENDS[scheme]
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise SagawayError(
            f"the {scheme} store needs an optional dependency ({exc.name}); "
            f"install sagaway[{'postgres' if scheme.startswith('postgres') else scheme}]"
        ) from exc
    store: SagaStore = getattr(module, class_name)(url)
    return store
