"""Real PostgreSQL outages for tests, scoped to one test (importable as ``pgfaults``).

:class:`Lockout` gives the test a login role of its own and a schema that role owns. The service
under test connects as that role (shop tables and saga log in that schema), so the test can cut
it off the way production fails, without touching anyone else's sessions on the shared server:

* :meth:`Lockout.begin`: the role's connection limit drops to 0 and its sessions are terminated
  (``pg_terminate_backend``). Statements in flight die with ``57P01 terminating connection due
  to administrator command``; every new connection is refused with ``53300 too many
  connections for role`` (PostgreSQL's "too many clients" class).
* :meth:`Lockout.end`: connections are allowed again.

The test's own admin work runs as the superuser from ``servers.POSTGRES_URL`` (never limited).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg

from servers import POSTGRES_URL, pg_schema_url

__all__ = ["Lockout", "lockout"]


class Lockout:
    def __init__(self, role: str, schema: str) -> None:
        self.role = role
        self.schema = schema
        parts = urlsplit(POSTGRES_URL)
        host = parts.netloc.rsplit("@", 1)[-1]
        self.url = pg_schema_url(
            schema, urlunsplit((parts.scheme, f"{role}@{host}", parts.path, "", ""))
        )
        """The service's URL (shop and saga log): the role, its schema."""
        self.active = False

    def _admin(self, sql: str, *params: object) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql, params or None)

    def terminate(self) -> None:
        """Kill every session of the role (they reconnect at once, unless locked out)."""
        self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            self.role,
        )

    def limit(self, connections: int) -> None:
        """Let the role hold at most ``connections`` sessions at once (then "too many")."""
        self._admin(f'ALTER ROLE "{self.role}" CONNECTION LIMIT {int(connections)}')

    def begin(self) -> None:
        self._admin(f'ALTER ROLE "{self.role}" CONNECTION LIMIT 0')
        self.terminate()
        self.active = True

    def end(self) -> None:
        self._admin(f'ALTER ROLE "{self.role}" CONNECTION LIMIT -1')
        self.active = False


@contextmanager
def lockout() -> Iterator[Lockout]:
    """A fresh role and schema for one test; both dropped afterwards."""
    tag = uuid.uuid4().hex[:12]
    cut = Lockout(f"sagaway_app_{tag}", f"sagaway_lockout_{tag}")
    cut._admin(f'CREATE ROLE "{cut.role}" LOGIN')
    try:
        cut._admin(f'CREATE SCHEMA "{cut.schema}" AUTHORIZATION "{cut.role}"')
        try:
            yield cut
        finally:
            cut.end()
            cut.terminate()
            cut._admin(f'DROP SCHEMA IF EXISTS "{cut.schema}" CASCADE')
    finally:
        cut._admin(f'DROP ROLE IF EXISTS "{cut.role}"')
