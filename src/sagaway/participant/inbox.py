"""The participant's inbox: one row per command message it has answered, in its OWN database.

The row is written in the same transaction as the handler's effect, so "the effect happened"
and "the message was processed" commit or roll back together. Everything the participant does
for a message is keyed by ``message_id`` (the step's idempotency key for its phase):

* **Claim first.** ``INSERT ... ON CONFLICT DO NOTHING`` of the row is the transaction's first
  write. When it inserts nothing, the message was answered before: the recorded reply is sent
  again and the handler does not run. On PostgreSQL a concurrent duplicate blocks on the first
  delivery's uncommitted row and then sees it committed (READ COMMITTED: the next statement
  gets a fresh snapshot); on SQLite writers are serialised by the database lock (BEGIN
  IMMEDIATE), so two deliveries of one id at once still apply once on both.
* **Tombstones.** A compensation whose forward command never ran claims the forward command's
  ``message_id`` with a failed "tombstone" row. The forward command, should it arrive late (a
  retry of an uncertain step still in flight), then finds its id taken and is answered with that
  failure, with no effect.

``INBOX`` is the table on a ``MetaData`` of its own; a service that manages its schema with
Alembic puts ``inbox_table(Base.metadata)`` in its models (autogenerate then writes the
migration), or copies the columns below into one. ``create_inbox`` creates it for tests and
scripts.

``open_engine`` makes the participant's engine from a URL, with the settings the inbox needs:

* SQLite: WAL (readers never block the writer), ``synchronous=NORMAL`` (durable against a
  process crash; at checkpoints against a power loss, like the shop's database), a busy timeout
  (another process writing the same file makes us wait, not fail), and BEGIN IMMEDIATE: the
  driver's own deferred BEGIN would let two transactions that read before they write deadlock
  on the lock upgrade; taking the write lock at BEGIN makes them queue instead.
* PostgreSQL: the psycopg (3) driver for a plain ``postgresql://`` URL; ``?schema=NAME`` (the
  saga store's convention) puts the tables in that schema through ``search_path``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Insert,
    MetaData,
    Select,
    String,
    Table,
    Update,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from sagaway.state import JSON as JSONValue
from sagaway.transport.base import Command, Reply

INBOX_TABLE = "sagaway_inbox"
KIND_REPLY = "reply"
KIND_TOMBSTONE = "tombstone"
TOMBSTONE_ERROR = "compensated before it ran"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def inbox_table(metadata: MetaData, name: str = INBOX_TABLE) -> Table:
    """The inbox table on ``metadata`` (a service's own ``Base.metadata``, for Alembic)."""
    return Table(
        name,
        metadata,
        # The step's key for its phase: "{saga_id}:{step}:{phase}" (255 as the shop's keys).
        Column("message_id", String(255), primary_key=True),
        Column("command", String(200), nullable=False),
        # "reply": a command this participant answered; "tombstone": a forward command that
        # was compensated before it ran, refused if it ever arrives.
        Column("kind", String(16), nullable=False, default=KIND_REPLY),
        Column("ok", Boolean, nullable=False),
        # {"output": ...} when ok, {"error": "..."} when not.
        Column("reply", JSON, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )


INBOX = inbox_table(MetaData())
"""The default inbox table (``sagaway_inbox``)."""


def create_inbox(engine: Engine, table: Table = INBOX) -> None:
    """Create the inbox table if it is missing (tests, scripts; services use migrations)."""
    table.create(engine, checkfirst=True)


async def create_inbox_async(engine: AsyncEngine, table: Table = INBOX) -> None:
    """``create_inbox`` on an ``AsyncEngine``."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: table.create(sync, checkfirst=True))


@dataclass(frozen=True, slots=True)
class Recorded:
    """An inbox row read back: what was answered (or refused) under one ``message_id``."""

    message_id: str
    command: str
    kind: str
    ok: bool
    output: JSONValue
    error: str | None

    def reply_to(self, command: Command) -> Reply:
        """The recorded answer, addressed to this delivery of the command (its attempt)."""
        if self.ok:
            return Reply.success(command, self.output)
        return Reply.failure(command, self.error or "failed")


_inserts: dict[tuple[str, int], Insert] = {}


def _insert_ignore(conn: Connection, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT (message_id) DO NOTHING`` for the connection's dialect, built
    once per table and dialect (SQLAlchemy then caches its compiled form)."""
    dialect = conn.dialect.name
    cache_key = (dialect, id(table))
    stmt = _inserts.get(cache_key)
    if stmt is None:
        if dialect == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["message_id"])
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["message_id"])
        else:  # pragma: no cover - other databases: a plain insert; duplicates then raise
            stmt = insert(table)
        # SQLAlchemy keeps an INSERT's rowcount only when asked; it says "claimed or not".
        stmt = stmt.execution_options(preserve_rowcount=True)
        _inserts[cache_key] = stmt
    return stmt


@dataclass(frozen=True, slots=True)
class _Statements:
    lookup: Select[Any]
    record: Update


_statements_by_table: dict[int, _Statements] = {}


def _statements(table: Table) -> _Statements:
    """The inbox's statements, built once per table with bind parameters: building one per
    call (``.where(...).values(...)``) cost more CPU than the transaction's SQL itself."""
    statements = _statements_by_table.get(id(table))
    if statements is None:
        key = table.c.message_id == bindparam("key")
        statements = _Statements(
            lookup=select(table).where(key),
            record=update(table)
            .where(key)
            .values(
                ok=bindparam("ok"), reply=bindparam("reply"), processed_at=bindparam("processed_at")
            ),
        )
        _statements_by_table[id(table)] = statements
    return statements


def _row(
    message_id: str, command: str, kind: str, ok: bool, body: dict[str, Any]
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "command": command,
        "kind": kind,
        "ok": ok,
        "reply": body,
        "processed_at": datetime.now(UTC),
    }


def lookup(conn: Connection, table: Table, message_id: str) -> Recorded | None:
    row = conn.execute(_statements(table).lookup, {"key": message_id}).first()
    if row is None:
        return None
    body = row.reply or {}
    return Recorded(
        message_id=row.message_id,
        command=row.command,
        kind=row.kind,
        ok=bool(row.ok),
        output=body.get("output"),
        error=body.get("error"),
    )


def claim(conn: Connection, table: Table, command: Command) -> Recorded | None:
    """Claim ``command.message_id`` for this transaction; None when claimed, else the row
    recorded before (a redelivery, or a tombstone that refuses a late forward command).

    The claimed row says "failed" until ``record`` fills in the answer; nobody sees it before
    the transaction commits."""
    values = _row(command.message_id, command.command, KIND_REPLY, False, {})
    if conn.execute(_insert_ignore(conn, table), values).rowcount == 1:
        return None
    recorded = lookup(conn, table, command.message_id)
    if recorded is None:  # pragma: no cover - a conflict means the row exists (or a bug)
        raise RuntimeError(f"inbox: {command.message_id!r} conflicted but cannot be read")
    return recorded


def record(conn: Connection, table: Table, message_id: str, ok: bool, body: dict[str, Any]) -> None:
    """Fill in the answer of the row this transaction claimed."""
    conn.execute(
        _statements(table).record,
        {"key": message_id, "ok": ok, "reply": body, "processed_at": datetime.now(UTC)},
    )


def record_failure(conn: Connection, table: Table, command: Command, error: str) -> Recorded | None:
    """Record a business failure in a transaction of its own (the effect's was rolled back).
    None when recorded; else the row another delivery (or a tombstone) wrote meanwhile."""
    values = _row(command.message_id, command.command, KIND_REPLY, False, {"error": error})
    if conn.execute(_insert_ignore(conn, table), values).rowcount == 1:
        return None
    return lookup(conn, table, command.message_id)


def tombstone(
    conn: Connection, table: Table, forward_key: str, forward_command: str
) -> Recorded | None:
    """Write a tombstone under ``forward_key`` unless the forward command was processed:
    None when the tombstone was written (the forward never ran: nothing to undo), else the
    forward command's row (blocks on PostgreSQL while that command is being processed)."""
    values = _row(forward_key, forward_command, KIND_TOMBSTONE, False, {"error": TOMBSTONE_ERROR})
    if conn.execute(_insert_ignore(conn, table), values).rowcount == 1:
        return None
    return lookup(conn, table, forward_key)


# -- the participant's engine ---------------------------------------------------------------


def sync_url(url: str | URL) -> tuple[URL, str | None]:
    """The URL SQLAlchemy's sync engine takes, and the PostgreSQL schema asked for (if any)."""
    parsed = make_url(url)
    schema: str | None = None
    if parsed.get_backend_name() == "postgresql":
        schema = parsed.query.get("schema")  # type: ignore[assignment]
        if schema is not None:
            parsed = parsed.difference_update_query(["schema"])
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed, schema


def open_engine(url: str | URL, *, pool_size: int = 8) -> Engine:
    """A sync ``Engine`` for a participant's database (see the module docstring)."""
    parsed, schema = sync_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        memory = _sqlite_memory(parsed)
        if memory:  # one shared connection, or every connection sees its own empty database
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        engine = create_engine(parsed, **kwargs)
        _sqlite_hooks(engine, memory=memory, raw=True)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
        if schema is not None:
            kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    return create_engine(parsed, **kwargs)


def open_async_engine(url: str | URL, *, pool_size: int = 8) -> AsyncEngine:
    """An ``AsyncEngine`` (aiosqlite, asyncpg) on the same database, with the same settings:
    what async handlers run on."""
    parsed, schema = sync_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        memory = _sqlite_memory(parsed)
        if memory:
            kwargs.update(poolclass=StaticPool)
        engine = create_async_engine(parsed.set(drivername="sqlite+aiosqlite"), **kwargs)
        _sqlite_hooks(engine.sync_engine, memory=memory, raw=False)
        return engine
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
        if schema is not None:
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    return create_async_engine(parsed, **kwargs)


def _sqlite_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:")


def _sqlite_hooks(engine: Engine, *, memory: bool, raw: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN (below), not the driver
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if raw:
            # Straight on the driver: SQLAlchemy's execution context around one BEGIN cost
            # as much CPU as the inbox's two statements.
            driver: Any = conn.connection.driver_connection
            driver.execute("BEGIN IMMEDIATE")
        else:  # aiosqlite: its driver connection is async; go through the DBAPI adapter
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_schema(engine: Engine, schema: str) -> None:
    """Create a PostgreSQL schema if missing (tests give each run one of its own)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
