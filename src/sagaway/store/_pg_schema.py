"""The PostgreSQL saga log's schema, its migrations, how the store names things, its URL, its
connections' settings, and how its rows decode into records.

The store owns its schema: ``open()`` creates it in an empty database (or schema) and migrates an
older one, in one transaction that first takes a transaction-scoped advisory lock derived from
the schema name, so two processes opening the same log at once queue up instead of both running
``CREATE TABLE`` (the second one then finds the work done). Tables keep SQLite's ``sagaway_``
prefix so the log can share a schema (``?schema=public``) with an application's own tables.

Column choices, and why:

* Times are ``double precision`` POSIX seconds: the engine's clock is a float, and the contract
  compares times exactly; ``timestamptz`` would round to microseconds.
* Inputs and outputs are ``jsonb`` (validated, queryable by operators).
* ``instances.events`` counts a saga's history: each write appends its events at
  ``events + k`` and bumps the counter in the same UPDATE that checks the lease, so history
  order is decided under the row lock, and ``events`` is keyed ``(saga_id, seq)``: one B-tree
  that is both the primary key and the in-order access path.
* ``fillfactor = 80`` on instances and steps leaves room on each page for HOT updates: a commit
  that changes neither status nor lease rewrites no index entry (nothing indexed changes).
* The claim index is partial (active sagas only): it stays as small as the work in flight.

Later versions append to ``MIGRATIONS``; a released entry is never edited.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # no stubs shipped

from sagaway.errors import SagawayError, StoreError
from sagaway.state import ACTIVE_STATUSES, Event, SagaRecord, StepRecord
from sagaway.store._codec import EVENT_TYPE, PHASE, SAGA_STATUS, STEP_STATUS, loads

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
ACTIVE_SQL = ",".join(f"'{s.value}'" for s in ACTIVE_STATUSES)

# Each entry migrates the schema from version ``index`` to ``index + 1``. ``{s}`` is the quoted
# schema name.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """
        CREATE TABLE {s}.sagaway_instances (
            id text PRIMARY KEY,
            name text NOT NULL,
            version integer NOT NULL,
            status text NOT NULL,
            input jsonb,
            idempotency_key text UNIQUE,
            owner text,
            lease_expires_at double precision,
            deadline_at double precision,
            cancel_requested boolean NOT NULL DEFAULT false,
            error text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            events integer NOT NULL DEFAULT 0
        ) WITH (fillfactor = 80)
        """,
        f"CREATE INDEX sagaway_instances_claim ON {{s}}.sagaway_instances (created_at, id) "
        f"WHERE status IN ({ACTIVE_SQL})",
        "CREATE INDEX sagaway_instances_created ON {s}.sagaway_instances (created_at, id)",
        "CREATE INDEX sagaway_instances_name ON {s}.sagaway_instances (name, created_at, id)",
        "CREATE INDEX sagaway_instances_status ON {s}.sagaway_instances (status, created_at, id)",
        """
        CREATE TABLE {s}.sagaway_steps (
            saga_id text NOT NULL,
            name text NOT NULL,
            phase text NOT NULL,
            status text NOT NULL,
            attempts integer NOT NULL,
            output jsonb,
            error text,
            uncertain boolean NOT NULL DEFAULT false,
            started_at double precision,
            finished_at double precision,
            PRIMARY KEY (saga_id, name, phase)
        ) WITH (fillfactor = 80)
        """,
        """
        CREATE TABLE {s}.sagaway_events (
            saga_id text NOT NULL,
            seq integer NOT NULL,
            at double precision NOT NULL,
            type text NOT NULL,
            step text,
            phase text,
            attempt integer,
            detail text,
            PRIMARY KEY (saga_id, seq)
        )
        """,
    ),
    (
        # Parked sagas: what they wait for and until when. NULL on every other row, so the
        # ALTER rewrites nothing (a catalog change only).
        "ALTER TABLE {s}.sagaway_instances ADD COLUMN waiting_for text, "
        "ADD COLUMN parked_until double precision",
        "CREATE INDEX sagaway_instances_parked ON {s}.sagaway_instances (parked_until, id) "
        "WHERE waiting_for IS NOT NULL",
        # The outbox: written by the batch statement with the transitions that make its
        # messages, deleted once they are published. One row per message id.
        """
        CREATE TABLE {s}.sagaway_outbox (
            id text PRIMARY KEY,
            saga_id text NOT NULL,
            topic text NOT NULL,
            body jsonb NOT NULL,
            headers jsonb NOT NULL,
            created_at double precision NOT NULL
        )
        """,
        "CREATE INDEX sagaway_outbox_created ON {s}.sagaway_outbox (created_at, id)",
    ),
    (
        # Claims of sagas that are not parked: without parked ones in it, a recovery pass no
        # longer walks every parked saga (100,000 waiting for a signal: 60-180 ms of server
        # time, each second). Due parked sagas are found through sagaway_instances_parked.
        f"CREATE INDEX sagaway_instances_free ON {{s}}.sagaway_instances (created_at, id) "
        f"WHERE status IN ({ACTIVE_SQL}) AND waiting_for IS NULL",
    ),
    (
        # Retention: a user's pin keeps a saga from being pruned. A constant default: a
        # catalog change only. Not indexed, and no index on updated_at either: every commit
        # writes updated_at, and an index on it would make none of them a HOT update; prunable
        # sagas are found through sagaway_instances_status instead.
        "ALTER TABLE {s}.sagaway_instances ADD COLUMN pinned boolean NOT NULL DEFAULT false",
    ),
    (
        # Compaction (_pg_compact): a finished saga's step rows and events, as one jsonb value
        # [steps, events] written just after the commit that finishes it. NULL while it runs,
        # so the column costs a running saga nothing (a catalog change only).
        "ALTER TABLE {s}.sagaway_instances ADD COLUMN packed jsonb",
    ),
    (
        # Lease renewal (each second) finds this engine's sagas by owner: without it, it walked
        # every active saga, the parked ones (RUNNING, no owner) included. Only leased sagas are
        # in it, and owner changes only with a claim, a park or a release, which write an
        # indexed column already: the step transitions stay HOT updates.
        "CREATE INDEX sagaway_instances_owner ON {s}.sagaway_instances (owner) "
        "WHERE owner IS NOT NULL",
    ),
    (
        # The stranded-sagas count (each minute) grouped every active saga by definition, to
        # find (usually) none of a definition the engine does not know: with 100,000 parked,
        # it read them all. With the parked sagas' definitions in an index it skips from one
        # to the next and counts only the unknown ones; the sagas not parked are found
        # through sagaway_instances_free, as claims find them. Only a tuple with waiting_for
        # set enters it: an update of a saga that never parks adds nothing to it.
        "CREATE INDEX sagaway_instances_parked_definition ON {s}.sagaway_instances "
        "(name, version) WHERE waiting_for IS NOT NULL",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)


def check_schema_name(name: str) -> str:
    """Validate a schema name and return it quoted. Plain identifiers only: the name is
    interpolated into DDL and statements, so anything else is refused rather than escaped."""
    if not _IDENTIFIER.match(name):
        raise SagawayError(
            f"bad PostgreSQL schema name {name!r}: use letters, digits and _ (max 63)"
        )
    return f'"{name}"'


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one saga log (one per schema, at most 63 bytes)."""
    channel = f"sagaway_work.{schema}"
    if len(channel) > 63:
        channel = "sagaway_work." + hashlib.sha256(schema.encode()).hexdigest()[:32]
    return channel


async def migrate(conn: asyncpg.Connection, schema: str) -> int:
    """Bring ``schema`` to ``SCHEMA_VERSION``; return the version found before migrating."""
    quoted = check_schema_name(schema)
    lock_key = int.from_bytes(hashlib.sha256(f"sagaway:{schema}".encode()).digest()[:8], "big")
    lock_key -= 1 << 63 if lock_key >= 1 << 63 else 0  # pg advisory keys are signed bigints
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key)
        # Check before CREATE SCHEMA: an existing schema must work for a role that may use it
        # but lacks CREATE on the database (PostgreSQL checks that privilege first).
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"CREATE SCHEMA {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.sagaway_schema (version integer PRIMARY KEY)"
        )
        found = int(
            await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {quoted}.sagaway_schema")
        )
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the saga log schema {schema!r} is version {found}, newer than this sagaway "
                f"(version {SCHEMA_VERSION}): upgrade sagaway"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                await conn.execute(statement.replace("{s}", quoted))
            await conn.execute(
                f"INSERT INTO {quoted}.sagaway_schema (version) VALUES ($1)", version
            )
    return found


# -- the store URL --------------------------------------------------------------------------

_SCHEMES = {"postgresql", "postgres"}
_DRIVERS = {None, "asyncpg", "psycopg", "psycopg2", "psycopg3"}


@dataclass(frozen=True, slots=True)
class PgSettings:
    dsn: str
    schema: str
    pool_size: int
    host: str
    port: int


def parse_url(url: str) -> PgSettings:
    parts = urlsplit(url)
    scheme, _, driver = parts.scheme.lower().partition("+")
    if scheme not in _SCHEMES or (driver or None) not in _DRIVERS:
        raise SagawayError(
            f"bad PostgreSQL URL {url!r}: use postgresql://user@host:5432/dbname[?schema=name]"
        )
    schema, pool_size, rest = "sagaway", 4, []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "schema":
            schema = value
        elif key == "pool_size":
            pool_size = int(value)
            if pool_size < 2:
                raise SagawayError(f"pool_size must be at least 2 in {url!r}")
        else:
            rest.append((key, value))
    check_schema_name(schema)
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return PgSettings(dsn, schema, pool_size, parts.hostname or "localhost", parts.port or 5432)


# JIT compiling the batch statements would cost more than running them; and their plans do not
# depend on the arrays' contents, so planning them anew each time (PostgreSQL's first five
# executions of a prepared statement, and again whenever it guesses a custom plan is cheaper)
# is pure overhead: measured, forcing the generic plan took a batch from ~2.2 to ~1.5 ms.
SERVER_SETTINGS = {
    "application_name": "sagaway",
    "jit": "off",
    "plan_cache_mode": "force_generic_plan",
}


# The server ended the session (pg_terminate_backend, a shutdown or restart) or the link broke:
# nothing more can be sent on that connection, and the pool replaces it.
_CONNECTION_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)


def connection_lost(conn: asyncpg.Connection, exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_LOST) or conn.is_closed()


# -- decoding rows ----------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    # json_agg prints 1000.0 as 1000: give the engine back the float it wrote.
    return None if value is None else float(value)


def saga_from_row(row: Sequence[Any]) -> SagaRecord:
    """A record from ``_COLS`` (+ steps JSON, + history JSON when present)."""
    record = SagaRecord(
        id=row[0],
        name=row[1],
        version=row[2],
        status=SAGA_STATUS[row[3]],
        input=None if row[4] is None else loads(row[4]),
        idempotency_key=row[5],
        owner=row[6],
        lease_expires_at=row[7],
        deadline_at=row[8],
        cancel_requested=row[9],
        error=row[10],
        created_at=row[11],
        updated_at=row[12],
        waiting_for=row[13],
        parked_until=row[14],
        pinned=row[15],
    )
    if len(row) > 16 and row[16] is not None:
        for s in loads(row[16]):
            step = StepRecord(
                name=s[0],
                phase=PHASE[s[1]],
                status=STEP_STATUS[s[2]],
                attempts=s[3],
                output=s[4],
                error=s[5],
                uncertain=s[6],
                started_at=_float(s[7]),
                finished_at=_float(s[8]),
            )
            record.steps[(step.name, step.phase)] = step
    if len(row) > 18:  # peek: the row's fence
        record.fence = row[18]
    if len(row) > 17 and row[17] is not None:
        record.history = [
            Event(
                at=float(e[0]),
                type=EVENT_TYPE[e[1]],
                step=e[2],
                phase=None if e[3] is None else PHASE[e[3]],
                attempt=e[4],
                detail=e[5],
            )
            for e in loads(row[17])
        ]
    return record
