"""The SQLite saga log's schema, its migrations, and how a connection is configured.

The store owns its schema: ``open()`` creates it on an empty file and migrates an older one, in
one ``BEGIN IMMEDIATE`` transaction, so two processes opening the same file at once cannot both
migrate it. Every table is prefixed ``sagaway_`` so the log can live in an application's own
database file (the checkout service keeps its shop tables next to it, which is what lets a step's
own writes be group-committed with the saga log).

Later versions append to ``MIGRATIONS``; a released entry is never edited.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qs, urlsplit

from sagaway.errors import SagawayError, StoreError

# Each entry migrates the schema from version ``index`` to ``index + 1``.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        # Times are POSIX seconds from the engine's clock; JSON columns are compact JSON text.
        # WITHOUT ROWID: sagas are found by id, so the table *is* the id index (one B-tree
        # fewer to write on every create, one lookup fewer on every commit).
        """
        CREATE TABLE sagaway_instances (
            id TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            input TEXT,
            idempotency_key TEXT,
            owner TEXT,
            lease_expires_at REAL,
            deadline_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        # Partial: sagas started without a key (most of them) cost this index nothing.
        "CREATE UNIQUE INDEX sagaway_instances_key ON sagaway_instances (idempotency_key) "
        "WHERE idempotency_key IS NOT NULL",
        # Claims scan active statuses for free leases; listings page newest first.
        "CREATE INDEX sagaway_instances_claim ON sagaway_instances (status, lease_expires_at)",
        "CREATE INDEX sagaway_instances_created ON sagaway_instances (created_at, id)",
        "CREATE INDEX sagaway_instances_name ON sagaway_instances (name, created_at, id)",
        # WITHOUT ROWID: the primary key is the only access path, so keep one B-tree, not two.
        """
        CREATE TABLE sagaway_steps (
            saga_id TEXT NOT NULL,
            name TEXT NOT NULL,
            phase TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            output TEXT,
            error TEXT,
            uncertain INTEGER NOT NULL DEFAULT 0,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (saga_id, name, phase)
        ) WITHOUT ROWID
        """,
        # ``id`` aliases the rowid: assigned in insertion order, so it *is* the history order.
        # (AUTOINCREMENT would only differ after deleting the newest row, which we never do, and
        # costs an extra write to sqlite_sequence per insert.)
        """
        CREATE TABLE sagaway_events (
            id INTEGER PRIMARY KEY,
            saga_id TEXT NOT NULL,
            at REAL NOT NULL,
            type TEXT NOT NULL,
            step TEXT,
            phase TEXT,
            attempt INTEGER,
            detail TEXT
        )
        """,
        # (saga_id) implicitly ends with the rowid, so it also returns a saga's events in order.
        "CREATE INDEX sagaway_events_saga ON sagaway_events (saga_id)",
    ),
    (
        # Parked sagas (waiting for a reply, a signal, a timer): what for and until when. NULL
        # on every other saga, so existing rows need no rewrite (ADD COLUMN is O(1)).
        "ALTER TABLE sagaway_instances ADD COLUMN waiting_for TEXT",
        "ALTER TABLE sagaway_instances ADD COLUMN parked_until REAL",
        # Partial: only parked sagas are in it (list_waiting, soonest first).
        "CREATE INDEX sagaway_instances_parked ON sagaway_instances (parked_until, id) "
        "WHERE waiting_for IS NOT NULL",
        # The outbox: messages written with the transition that made them, deleted once
        # published. One row per message id (a message written again replaces it).
        """
        CREATE TABLE sagaway_outbox (
            id TEXT PRIMARY KEY NOT NULL,
            saga_id TEXT NOT NULL,
            topic TEXT NOT NULL,
            body TEXT NOT NULL,
            headers TEXT NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX sagaway_outbox_created ON sagaway_outbox (created_at, id)",
    ),
    (
        # Claims of sagas that are not parked: without parked ones in it, a recovery pass no
        # longer reads every parked saga (100,000 waiting for a signal: ~170 ms, each second).
        # Due parked sagas are found through sagaway_instances_parked.
        "CREATE INDEX sagaway_instances_free ON sagaway_instances (status, lease_expires_at) "
        "WHERE waiting_for IS NULL",
    ),
    (
        # Retention: a user's pin keeps a saga from being pruned (ADD COLUMN with a constant
        # default rewrites no row).
        "ALTER TABLE sagaway_instances ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",
        # Prunable sagas, oldest write first. Partial: a saga enters it once, when it finishes
        # (SQLite touches a partial index only for rows its WHERE admits, so the commits of
        # running sagas, which all change updated_at, cost it nothing).
        "CREATE INDEX sagaway_instances_finished ON sagaway_instances (updated_at, id) "
        "WHERE status IN ('SUCCEEDED', 'COMPENSATED') AND pinned = 0",
    ),
    (
        # sagaway_instances_free held every saga not parked, finished ones too (55 bytes
        # each, ~3% of a finished saga's log), though claim only ever reads active ones: now
        # a saga leaves it when it finishes (as on PostgreSQL). The same terms as claim's WHERE.
        "DROP INDEX sagaway_instances_free",
        "CREATE INDEX sagaway_instances_free ON sagaway_instances (status, lease_expires_at) "
        "WHERE status IN ('PENDING','RUNNING','COMPENSATING') AND waiting_for IS NULL",
    ),
    (
        # Version 5 undone: with status in the index's WHERE, the store spent ~8% more CPU per
        # saga (280 -> 305 us, 8,000 sagas of 4 commits, 3 runs each, interleaved; the engine
        # benchmark +4.5% over 6 runs) for 55 bytes a saga. The cause is not found yet: until it
        # is, the index is what it was in version 3.
        "DROP INDEX sagaway_instances_free",
        "CREATE INDEX sagaway_instances_free ON sagaway_instances (status, lease_expires_at) "
        "WHERE waiting_for IS NULL",
    ),
    (
        # Compaction (_sqlite_compact): a finished saga's step rows and events, packed into
        # one value on its row by the commit that finishes it. NULL while it runs.
        "ALTER TABLE sagaway_instances ADD COLUMN packed BLOB",
        # Texts packed values share (step names, engine ids), each kept once, by number.
        # Rows are only ever added: a number, once used in a packed value, must keep its text.
        """
        CREATE TABLE sagaway_texts (
            id INTEGER PRIMARY KEY,
            text TEXT NOT NULL UNIQUE
        )
        """,
        # A saga over for good (SUCCEEDED, COMPENSATED: the bulk of the log) leaves the two
        # status indexes, ~110 bytes a saga: what reads them only wants active and FAILED
        # sagas (claims, lease renewal, stranded sagas, listings by such a status). Listing
        # SUCCEEDED or COMPENSATED ones walks sagaway_instances_created instead. Every query
        # meant to use them repeats the exact NOT IN term (_sqlite_ops.NOT_DONE).
        "DROP INDEX sagaway_instances_claim",
        "CREATE INDEX sagaway_instances_open ON sagaway_instances (status, created_at, id) "
        "WHERE status NOT IN ('SUCCEEDED','COMPENSATED')",
        "DROP INDEX sagaway_instances_free",
        "CREATE INDEX sagaway_instances_free ON sagaway_instances (status, lease_expires_at) "
        "WHERE waiting_for IS NULL AND status NOT IN ('SUCCEEDED','COMPENSATED')",
    ),
    (
        # Change.take: every write of a saga's row adds one, so a write conditional on a
        # read of the row (a parked saga taken by the write that applies its signal) applies
        # only if nothing wrote the row since. ADD COLUMN with a constant default: no rewrite.
        "ALTER TABLE sagaway_instances ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Lease renewal (each recovery pass, in a group commit) found an engine's sagas
        # through sagaway_instances_open, which holds every parked saga too (they run, with
        # no owner): with 100,000 parked it read them all each second, ~100 ms on the loop's
        # thread, and every signal in flight waited. Only leased sagas are in this one
        # (parking and finishing release the lease), and only a claim, a take, a park or a
        # release writes owner, so a step's progress never touches it.
        "CREATE INDEX sagaway_instances_owner ON sagaway_instances (owner) WHERE owner IS NOT NULL",
    ),
    (
        # The journal (_sqlite_compact): what each write of a running saga records (step rows,
        # events), appended to its row by the write's own UPDATE instead of one row each in
        # sagaway_steps and sagaway_events (which are still read, for sagas written before).
        "ALTER TABLE sagaway_instances ADD COLUMN journal TEXT",
    ),
    (
        # The stranded-sagas count (each minute, on the reader) grouped every active saga by
        # definition, to find (usually) none of a definition the engine does not know: with
        # 100,000 parked, it read them all. With the parked sagas' definitions in an index it
        # skips from one definition to the next and counts only the unknown ones; the sagas
        # not parked are found through sagaway_instances_free, as claims find them. Only a
        # park or an unpark writes waiting_for: a saga that never parks never touches it (an
        # index of every active saga cost the engine benchmark ~9% more instructions).
        "CREATE INDEX sagaway_instances_parked_definition ON sagaway_instances (name, version) "
        "WHERE waiting_for IS NOT NULL",
    ),
    (
        # The journal's chunks as pickles of plain rows (_sqlite_compact.journal_chunk), not
        # JSON text: a third of the cost to write and to read. Its own column, so a saga that
        # ran before keeps its JSON journal in ``journal`` (read, never written) and continues
        # here, and nothing needs rewriting.
        "ALTER TABLE sagaway_instances ADD COLUMN chunks BLOB",
    ),
    (
        # Lease renewal finds an engine's sagas through sagaway_instances_free (every leased
        # saga not parked) and the due part of sagaway_instances_parked (a parked saga a
        # claim leased; parking and finishing release the lease): the owner index's entry,
        # written by every create and removed by every finish, served nothing else
        # (engine_instructions.py, sqlite://, compiled: ~9k instructions a saga, 1.4%).
        "DROP INDEX sagaway_instances_owner",
        # No query seeks sagaway_instances_free by lease_expires_at (claims and the stranded
        # count read all its entries of a status and test the lease on the row): keyed by
        # owner instead, renewal seeks its own sagas and, the lease in no index any more,
        # rewrites no index entry (it rewrote one per leased saga, each pass).
        "DROP INDEX sagaway_instances_free",
        "CREATE INDEX sagaway_instances_free ON sagaway_instances (status, owner) "
        "WHERE waiting_for IS NULL AND status NOT IN ('SUCCEEDED','COMPENSATED')",
    ),
    (
        # One status index where there were two: sagaway_instances_open (listings by status)
        # and sagaway_instances_free (claims, renewal, the stranded count: sagas not parked)
        # held the same sagas but the parked ones, so a saga's create and finish each wrote
        # both. Whether a saga is parked is now the index's second key, so a claim, a renewal
        # or the stranded count still seeks past every parked saga, and a listing by status
        # merges the two ordered ranges of that status (UNION ALL ... ORDER BY). owner last:
        # renewal tests it on the entry, reading no row of another engine's saga. Every
        # query meant to use it repeats the exact terms (_sqlite_ops.NOT_DONE, NOT_PARKED,
        # PARKED): SQLite uses a partial index, or an index on an expression, only then.
        "DROP INDEX sagaway_instances_free",
        "DROP INDEX sagaway_instances_open",
        "CREATE INDEX sagaway_instances_open ON sagaway_instances "
        "(status, waiting_for IS NOT NULL, created_at, id, owner) "
        "WHERE status NOT IN ('SUCCEEDED','COMPENSATED')",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)
# The page size of a log file this store creates (an existing file keeps its own).
PAGE_SIZE = 8192
_FALSE = {"0", "false", "no", "off"}


def parse_url(url: str) -> tuple[str, bool, int]:
    """``(path, durable, busy_timeout_ms)`` from a ``sqlite:///...`` URL."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("sqlite") or parts.netloc:
        raise SagawayError(
            f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = parts.path[1:]
    if not path or path == ":memory:":
        raise SagawayError(
            f"bad SQLite URL {url!r}: a file path is required (use memory:// for an "
            "in-memory store)"
        )
    durable, busy_timeout = True, 10_000
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key == "durable":
            durable = value.lower() not in _FALSE
        elif key == "busy_timeout":
            busy_timeout = int(value)
        else:
            raise SagawayError(f"unknown SQLite URL parameter {key!r} in {url!r}")
    return path, durable, busy_timeout


def connect(path: str, *, durable: bool, busy_timeout_ms: int, reader: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (the store issues BEGIN/COMMIT itself), WAL journal.

    ``check_same_thread`` is off because a connection is made on one thread and used on
    another (the writer on the event loop's, the reader on its own), never by two at once.
    """
    try:
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if reader:
            conn.execute("PRAGMA query_only = ON")
        else:
            # A new file only (before WAL mode writes its header; on any other file this
            # changes nothing): a finished saga's row is small, but it grew while the saga ran
            # and split pages that stay part empty; twice the page holds more of them between
            # the sagas running at the end of the table (log_size.py: 494 -> 447 bytes a saga).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise StoreError(f"sqlite: cannot enable WAL on {path!r} (journal_mode={mode})")
            # FULL fsyncs the WAL on every commit: a transition is on disk before the step runs.
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("PRAGMA temp_store = MEMORY")
        return conn
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite: cannot open {path!r}: {exc}") from exc


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; return the version found before migrating."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sagaway_schema (version INTEGER PRIMARY KEY NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM sagaway_schema").fetchone()
            found = int(row[0] or 0)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"the saga log schema is version {found}, newer than this sagaway "
                    f"(version {SCHEMA_VERSION}): upgrade sagaway"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO sagaway_schema (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
            return found
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite: cannot create or migrate the saga log schema: {exc}") from exc
