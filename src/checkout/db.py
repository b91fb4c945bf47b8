"""The shop database: SQLAlchemy models, async engine set-up, and programmatic migrations.

One module owns how we talk to the database so that the SQLite specifics live in one place:

* **WAL + busy_timeout**: the saga log opens a second connection to the same file by default, so
  readers must not block writers and a writer that finds the lock taken waits instead of failing.
* **BEGIN IMMEDIATE for writes**: a deferred transaction that reads and then writes must upgrade
  its lock, and two such transactions deadlock (both hold SHARED, both want RESERVED; SQLite
  fails one with "database is locked" without waiting). Taking the write lock at BEGIN makes
  writers queue on busy_timeout instead. Read-only sessions keep plain BEGIN and run in parallel.
* **Migrations, never create_all**: the schema is whatever Alembic's head says, on SQLite and
  PostgreSQL alike; :func:`migrate` is called by the service on start and by tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    event,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.pool import StaticPool

from checkout.settings import async_database_url
from sagaway.participant.inbox import inbox_table
from sagaway.store.sqlite import PAGE_SIZE as LOG_PAGE_SIZE

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Our own version table: the saga log may keep its own Alembic history in the same SQLite file.
VERSION_TABLE = "checkout_alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 10_000
_BEGIN_OPTION = "checkout_sqlite_begin"
_PG_MIGRATION_LOCK = 0x5A6A_C0DE  # pg_advisory_xact_lock key: one migrator at a time

KEY = String(255)  # idempotency keys: "{saga_id}:{step}:{phase}"
ID = String(64)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes even for timezone=True columns; they were stored UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    # Deterministic constraint names, so migrations can refer to them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class _Timestamps:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class _ShippingAddress:
    ship_street: Mapped[str | None] = mapped_column(String(200))
    ship_city: Mapped[str | None] = mapped_column(String(100))
    ship_province: Mapped[str | None] = mapped_column(String(100))
    ship_postal_code: Mapped[str | None] = mapped_column(String(32))
    ship_country: Mapped[str | None] = mapped_column(String(64))


# Which service owns which table. Each service writes only its own tables, has its own Alembic
# history (checkout/services/<name>/migrations) and, run as a service, its own database; the
# gateway (``checkout serve``) owns the orders. Embedded (``make run``) they share one file.


class ProductRow(Base):
    """Inventory's catalogue. ``stock`` is available; ``reserved`` is held by reservations
    (whether or not the shipping service has shipped them: that is the shipping service's own
    count, :class:`ShippedRow`). ``stock + reserved`` only changes on restock, never by a saga."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_nonneg"),
        CheckConstraint("reserved >= 0", name="reserved_nonneg"),
        CheckConstraint("price_cents >= 0", name="price_nonneg"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    price_cents: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, default=0)


class ShippedRow(Base):
    """Shipping's count of units shipped per product: moved in the same transaction as a
    shipment is created or cancelled, so it always equals the items of created shipments."""

    __tablename__ = "shipped_units"
    __table_args__ = (CheckConstraint("quantity >= 0", name="quantity_nonneg"),)

    product_id: Mapped[str] = mapped_column(ID, primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer, default=0)


class AccountRow(_ShippingAddress, Base):  # the payment service's
    """A customer account: its balance pays for orders; its address is the default one."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance_cents >= 0", name="balance_nonneg"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    balance_cents: Mapped[int] = mapped_column(BigInteger)


ORDER_STATUSES = ("pending", "processing", "completed", "failed", "cancelled")


class OrderRow(_ShippingAddress, _Timestamps, Base):
    """An order as the customer placed it. ``customer_id`` and the items' product ids are not
    foreign keys on purpose: an order records what was asked for, and it is the saga's
    ``validate_order`` step that fails it with "User not found" / "Product not found"."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name="status",
        ),
        Index(None, "created_at"),
        Index(None, "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    customer_id: Mapped[str] = mapped_column(ID, index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    total_cents: Mapped[int] = mapped_column(BigInteger)
    payment_method: Mapped[str] = mapped_column(String(32), default="card")
    saga_id: Mapped[str | None] = mapped_column(ID, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(KEY, unique=True)
    # sha256 of the request that first used idempotency_key (checkout.api.idempotency)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)

    items: Mapped[list[OrderItemRow]] = relationship(
        back_populates="order",
        cascade="all, delete-orphan",
        order_by="OrderItemRow.line_no",
        lazy="selectin",
    )


class OrderItemRow(Base):
    __tablename__ = "order_items"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    order_id: Mapped[str] = mapped_column(
        ID, ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    product_id: Mapped[str] = mapped_column(ID)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_cents: Mapped[int] = mapped_column(BigInteger)

    order: Mapped[OrderRow] = relationship(back_populates="items")


# Participant ledgers (payments: payment's; inventory_reservations: inventory's; shipments:
# shipping's). Each is keyed by the forward action's idempotency key, so the primary key is the
# dedupe: a second insert with the same key cannot happen, on any backend, under any race. No
# foreign keys: participants are separate services (that share a database when embedded), and a
# tombstone may name an order or account that does not exist.


class PaymentRow(_Timestamps, Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("status IN ('captured', 'refunded', 'void')", name="status"),
        CheckConstraint("amount_cents >= 0", name="amount_nonneg"),
    )

    idempotency_key: Mapped[str] = mapped_column(KEY, primary_key=True)
    order_id: Mapped[str | None] = mapped_column(ID, index=True)
    account_id: Mapped[str | None] = mapped_column(ID)
    amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16))
    compensation_key: Mapped[str | None] = mapped_column(KEY)


class ReservationRow(_Timestamps, Base):
    __tablename__ = "inventory_reservations"
    __table_args__ = (
        CheckConstraint("status IN ('reserved', 'released', 'cancelled')", name="status"),
    )

    idempotency_key: Mapped[str] = mapped_column(KEY, primary_key=True)
    order_id: Mapped[str | None] = mapped_column(ID, index=True)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))
    compensation_key: Mapped[str | None] = mapped_column(KEY)


class ShipmentRow(_Timestamps, Base):
    __tablename__ = "shipments"
    __table_args__ = (CheckConstraint("status IN ('created', 'cancelled', 'void')", name="status"),)

    idempotency_key: Mapped[str] = mapped_column(KEY, primary_key=True)
    order_id: Mapped[str | None] = mapped_column(ID, index=True)
    courier: Mapped[str | None] = mapped_column(String(100))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    address: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    compensation_key: Mapped[str | None] = mapped_column(KEY)


# Each service's inbox (the participant library's: one row per saga command it answered,
# written in the transaction of the command's effect). One table per service, so the three
# can share the embedded database.
PAYMENT_INBOX = inbox_table(Base.metadata, "payment_inbox")
INVENTORY_INBOX = inbox_table(Base.metadata, "inventory_inbox")
SHIPPING_INBOX = inbox_table(Base.metadata, "shipping_inbox")


# --------------------------------------------------------------------------- engine and sessions


class SessionFactory:
    """Makes sessions like ``async_sessionmaker``, but ``begin()`` on SQLite first takes a
    process-wide asyncio lock.

    SQLite has one writer at a time. Writers that find the file locked wait in SQLite's busy
    handler, which *sleeps* (1, 2, 5, 10... ms) and retries: under load most of the time goes
    to sleeping. Queuing this process's writers on an asyncio lock instead hands the write
    lock over the moment it is free; SQLite's busy handler is then only needed against other
    connections to the file (the saga log, another process). PostgreSQL needs no such lock.
    Never nest ``begin()`` calls of one factory: the inner one would wait for the outer.
    """

    def __init__(
        self, maker: async_sessionmaker[AsyncSession], lock: asyncio.Lock | None = None
    ) -> None:
        self._maker = maker
        self._lock = lock

    @property
    def lock(self) -> asyncio.Lock | None:
        """The write queue (SQLite), shared with :class:`checkout.dbexec.EngineExecutor`."""
        return self._lock

    def __call__(self) -> AsyncSession:
        """A session outside the write queue (autobegin): for reads."""
        return self._maker()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on exit, rolled back on an exception."""
        if self._lock is None:
            async with self._maker.begin() as session:
                yield session
        else:
            async with self._lock, self._maker.begin() as session:
                yield session


@dataclass(frozen=True)
class Database:
    """An engine plus the two session factories the service uses.

    ``sessions`` is for transactions that write (BEGIN IMMEDIATE on SQLite); ``read_sessions``
    for read-only ones, which on SQLite may then run alongside a writer thanks to WAL. On
    PostgreSQL both are ordinary READ COMMITTED sessions.
    """

    url: str
    engine: AsyncEngine
    sessions: SessionFactory
    read_sessions: SessionFactory
    read_engine: AsyncEngine  # plain BEGIN on SQLite (read-only work)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    async def dispose(self) -> None:
        await self.engine.dispose()


def _install_sqlite_hooks(engine: AsyncEngine, *, memory: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver so the "begin" hook below decides its kind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                # A new file gets the saga log's page size (before WAL mode writes its header;
                # an existing file keeps its own): the embedded default shares the file with
                # the log, and this process's migrations create it before the log opens it.
                cursor.execute(f"PRAGMA page_size={LOG_PAGE_SIZE}")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, in WAL
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def open_database(
    url: str,
    *,
    schema: str | None = None,
    pool_size: int = 5,
    max_overflow: int = 0,
    echo: bool = False,
) -> Database:
    """Create the engine for ``url`` (plain ``sqlite:///`` or ``postgresql://`` accepted).

    ``schema`` (PostgreSQL only) puts every table in that schema via ``search_path``: the
    integration tests give each test its own schema so they can run side by side.
    """
    async_url = async_database_url(url)
    parsed = make_url(async_url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("schema= is only supported on PostgreSQL")
        memory = parsed.database in (None, "", ":memory:")
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if memory:
            # One shared connection, or every session would see its own empty database.
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"]["check_same_thread"] = False
        else:
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow)
        engine = create_async_engine(async_url, **kwargs)
        _install_sqlite_hooks(engine, memory=memory)
    else:
        if schema is not None:
            kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)
        engine = create_async_engine(async_url, **kwargs)
    reader = engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
    write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
    return Database(
        url=async_url,
        engine=engine,
        sessions=SessionFactory(async_sessionmaker(engine, expire_on_commit=False), write_lock),
        read_sessions=SessionFactory(async_sessionmaker(reader, expire_on_commit=False)),
        read_engine=reader,
    )


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True, slots=True)
class History:
    """One Alembic history: the gateway's (orders) or a service's (its own tables)."""

    name: str
    directory: Path
    version_table: str
    tables: tuple[str, ...]


SERVICES_DIR = Path(__file__).with_name("services")
# Seed 004's pay-later tables (``checkout.orderflow.tables``) split the same way: the order's
# with the gateway, the payment's with payment, the delivery's with shipping.
GATEWAY = History(
    "checkout", MIGRATIONS_DIR, VERSION_TABLE,
    ("orders", "order_items", "flow_orders", "flow_order_inbox", "flow_order_outbox"),
)  # fmt: skip
PAYMENT = History(
    "payment", SERVICES_DIR / "payment" / "migrations", "payment_alembic_version",
    ("accounts", "payments", "payment_inbox",
     "flow_payments", "flow_payment_inbox", "flow_payment_outbox"),
)  # fmt: skip
INVENTORY = History(
    "inventory", SERVICES_DIR / "inventory" / "migrations", "inventory_alembic_version",
    ("products", "inventory_reservations", "inventory_inbox"),
)  # fmt: skip
SHIPPING = History(
    "shipping", SERVICES_DIR / "shipping" / "migrations", "shipping_alembic_version",
    ("shipments", "shipped_units", "shipping_inbox",
     "flow_deliveries", "flow_delivery_inbox", "flow_delivery_outbox"),
)  # fmt: skip
SERVICE_HISTORIES = {h.name: h for h in (PAYMENT, INVENTORY, SHIPPING)}
# The embedded shop (``make run``): every history in one database, the gateway's first (its
# 0003 hands the participants' tables over to the services' histories).
EMBEDDED = (GATEWAY, PAYMENT, INVENTORY, SHIPPING)


def alembic_config(connection: Connection | None = None, history: History = GATEWAY) -> Config:
    """An Alembic config pointing at ``history``'s migrations, without an alembic.ini on disk
    (the package may be installed as a wheel). ``connection`` is handed to env.py."""
    cfg = Config()
    cfg.set_main_option("script_location", str(history.directory))
    cfg.attributes["connection"] = connection
    return cfg


def take_migration_lock(connection: Connection) -> None:
    """One migrator at a time on PostgreSQL (held until the transaction ends): two processes
    starting together (server + worker, or ``alembic upgrade``) must not race on CREATE TABLE.
    SQLite needs nothing: a write transaction is BEGIN IMMEDIATE."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")


def _upgrade(connection: Connection, revision: str, histories: Sequence[History]) -> None:
    take_migration_lock(connection)
    for history in histories:
        command.upgrade(alembic_config(connection, history), revision)


def _downgrade(connection: Connection, revision: str, histories: Sequence[History]) -> None:
    for history in reversed(histories):
        command.downgrade(alembic_config(connection, history), revision)


async def migrate(
    db: Database | AsyncEngine, revision: str = "head", *, histories: Sequence[History] = EMBEDDED
) -> None:
    """Upgrade ``histories`` (default: the whole embedded shop; a service passes its own) to
    ``revision`` (default: the latest). Safe to call on every start: an up-to-date database is
    left alone, and concurrent callers serialise (BEGIN IMMEDIATE on SQLite, an advisory lock
    on PostgreSQL)."""
    engine = db.engine if isinstance(db, Database) else db
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision, histories)


async def downgrade(
    db: Database | AsyncEngine, revision: str = "base", *, histories: Sequence[History] = EMBEDDED
) -> None:
    """Downgrade ``histories``, last first (tests check every migration can be undone)."""
    engine = db.engine if isinstance(db, Database) else db
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, revision, histories)


def apply_migrations(
    database_url: str, *, schema: str | None = None, histories: Sequence[History] = EMBEDDED
) -> None:
    """Synchronous entry point for CLIs and scripts: open, migrate to head, close.

    Must not be called from inside a running event loop; use :func:`migrate` there.
    """

    async def run() -> None:
        db = open_database(database_url, schema=schema, pool_size=1, max_overflow=0)
        try:
            await migrate(db, histories=histories)
        finally:
            await db.dispose()

    asyncio.run(run())


# The pay-later (seed 004) tables live on Base.metadata too, each in its owner's history
# (gateway 0004, payment p0003, shipping s0003). Imported last: that module needs Base.
from checkout.orderflow import tables as _flow_tables  # noqa: E402, F401
