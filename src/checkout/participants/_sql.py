"""SQL building blocks shared by the participants: claim-by-key inserts and guarded updates.

Every shop operation is a synchronous function over a SQLAlchemy Core ``Connection`` (see
:mod:`checkout.dbexec`: the executor owns the transaction), and every participant follows one
pattern, so it is written once here:

1. **Claim the idempotency key** with ``INSERT ... ON CONFLICT DO NOTHING`` in the same
   transaction as the effect. If the row already exists the call is a repeat (or a tombstone
   beat it) and the recorded row is returned; nothing is applied twice. On PostgreSQL a second
   concurrent call with the same key blocks on the first one's uncommitted row and then sees
   it, so even simultaneous repeats apply once. On SQLite writers are serialised (one writer
   thread, or BEGIN IMMEDIATE; a transaction that read an older snapshot cannot write at all),
   so there the key is claimed after the effect, its lookup riding the effect's first write
   (:func:`claim_once`, :func:`first_write`): a business failure then raises before the
   operation's first write, which is what lets the saga store's group commit run it without a
   savepoint (``rows_only``).
2. **Apply the effect with conditional updates** (``... WHERE stock >= :q``): the check and the
   write are one statement, so concurrent orders cannot oversell or overdraw on either backend.
3. **A business failure raises**, which rolls the claim back too: nothing is recorded, and a
   retry with the same key evaluates afresh.

Statements are built once, at import, with named bind parameters: SQLAlchemy then compiles each
one once per dialect and caches it. The hot writes (the claims, the guarded updates, an order's
rows) go through :func:`run`, which on the plain ``sqlite3`` driver (the store executor's writer,
where every shop write runs on SQLite) goes one step further: the Core statement is compiled
once into SQL text, a parameter order, its constant parameters and the bind processors, and a
call runs that SQL straight on the driver. Measured: 20-35 us of SQLAlchemy per statement
against 3-5 us this way, on the one writer every write of the file waits for. The
statement is still the one Core statement (other drivers, PostgreSQL, run it through
SQLAlchemy as before). The hot reads (an order's account and prices, on the writer when an
order is created and on the event loop in ``validate_order``) go through :func:`fetch`, the
same idea for a ``SELECT``: SQL, parameter order and each column's result processor compiled
once, rows as named tuples (attribute access like SQLAlchemy's ``Row``).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Final, cast

from sqlalchemy import Column, Executable, Insert, Select, Table, Update, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import UpdateBase

from checkout.db import Base
from checkout.dbexec import RAW_SQLITE
from checkout.domain.models import Address, OrderLine


def table_of(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


@cache
def _insert_ignore(dialect: str, table: Table, key: str) -> Insert:
    # preserve_rowcount: without it an INSERT's rowcount is not kept on every driver (psycopg
    # gives -1), and "not inserted" would be read as "a repeat": no debit, payment recorded.
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        return stmt.execution_options(preserve_rowcount=True)
    if dialect == "sqlite":
        lite = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        return lite.execution_options(preserve_rowcount=True)
    raise NotImplementedError(f"insert_ignore does not support {dialect}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class _Plan:
    """One DML statement compiled for the ``sqlite3`` driver, for one set of parameter keys."""

    sql: str
    # Per positional parameter: (name, bind processor or None, constant value already through
    # its processor, is it constant).
    params: tuple[tuple[str, Callable[[Any], Any] | None, Any, bool], ...]
    # Columns whose Python-side default (or onupdate) the statement must fill in: (column,
    # the function it stands for, the default). A function shared by several columns is called
    # once per row (created_at = updated_at = one utcnow()).
    defaults: tuple[tuple[str, object, Callable[[Any], Any]], ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        if self.defaults:
            values = dict(values)
            made: dict[object, Any] = {}
            for name, function, default in self.defaults:
                if name not in values:
                    if function not in made:
                        made[function] = default(None)
                    values[name] = made[function]
        return [
            constant if fixed else (values[name] if proc is None else proc(values[name]))
            for name, proc, constant, fixed in self.params
        ]


_plans: dict[tuple[int, str, tuple[str, ...]], tuple[UpdateBase, _Plan | None]] = {}


def _default_of(column: Column[Any], update: bool) -> Callable[[Any], Any] | None:
    default: Any = column.onupdate if update else column.default
    if default is None:
        return None
    if getattr(default, "is_callable", False):
        return cast(Callable[[Any], Any], default.arg)  # SQLAlchemy wrapped it to take a context
    if getattr(default, "is_scalar", False):
        value = default.arg
        return lambda _context: value
    return None  # a SQL expression or a sequence: SQLAlchemy's job


# SQLite's DATETIME as SQLAlchemy writes it by default (see _DatetimeText).
_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"
_SQLITE_DATETIME_FORMAT = sqlite.DATETIME._storage_format


class _LastText:
    """The last datetime a ``_DatetimeText`` formatted, with its text, shared by all of them
    (a row's created_at and updated_at are two parameters, two processors, one value)."""

    __slots__ = ("pair",)

    def __init__(self) -> None:
        # (value, text) in one tuple, read and replaced whole: reads may run on another thread.
        self.pair: tuple[object, str] = (None, "")


_last_datetime = _LastText()


class _DatetimeText:
    """SQLite's DATETIME bind processor in its default storage format, faster: the text from
    a tuple rather than SQLAlchemy's dict of seven named fields (~1.0 us against ~2.7 us a
    value), and the last value's text again for the very same object (a row's created_at and
    updated_at are one ``utcnow()``: two columns, one formatting, ~8k instructions)."""

    __slots__ = ("_proc",)

    def __init__(self, proc: Callable[[Any], Any]) -> None:
        self._proc = proc

    def __call__(self, value: Any) -> Any:
        if type(value) is not datetime:
            return self._proc(value)  # None, a date, a subclass, a wrong type: as SQLAlchemy does
        last = _last_datetime.pair
        if last[0] is value:  # datetimes are immutable: the same object, the same text
            return last[1]
        # Any zone: SQLAlchemy's writes the wall time and drops it.
        text = _SQLITE_DATETIME % (
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
        )
        _last_datetime.pair = (value, text)
        return text


def _faster(conn: Connection, bind: Any, proc: Callable[[Any], Any] | None) -> Any:
    """``proc``, the bind processor SQLAlchemy compiled for ``bind``, or an equivalent one
    that writes the same value faster: SQLite's DATETIME in its default storage format."""
    if proc is None or bind is None:
        return proc
    impl = bind.type.dialect_impl(conn.dialect)
    if not isinstance(impl, sqlite.DATETIME) or impl._storage_format != _SQLITE_DATETIME_FORMAT:
        return proc
    return _DatetimeText(proc)


def _compile(conn: Connection, stmt: UpdateBase, keys: tuple[str, ...]) -> _Plan | None:
    """The plan for ``stmt`` with parameters ``keys``, or None when it needs SQLAlchemy at
    run time (expanding IN lists, SQL-side or context-dependent defaults)."""
    compiled: Any = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
    if compiled.positiontup is None or compiled.literal_execute_params:
        return None
    if compiled.post_compile_params:
        return None
    defaults: list[tuple[str, object, Callable[[Any], Any]]] = []
    for update, columns in ((False, compiled.insert_prefetch), (True, compiled.update_prefetch)):
        for column in columns:
            fill = _default_of(column, update)
            if fill is None:
                return None
            # SQLAlchemy wraps a zero-argument default per column; __wrapped__ is the function.
            defaults.append((column.key, getattr(fill, "__wrapped__", fill), fill))
    filled = set(keys) | {name for name, _, _ in defaults}
    processors = compiled._bind_processors
    params = []
    for name in compiled.positiontup:
        proc = _faster(conn, compiled.binds.get(name), processors.get(name))
        if name in filled:
            params.append((name, proc, None, False))
            continue
        bind = compiled.binds.get(name)
        if bind is None or bind.callable is not None or bind.required:
            return None
        params.append((name, proc, bind.value if proc is None else proc(bind.value), True))
    return _Plan(compiled.string, tuple(params), tuple(defaults))


def _plan(conn: Connection, stmt: UpdateBase, keys: tuple[str, ...]) -> _Plan | None:
    slot = (id(stmt), conn.dialect.name, keys)
    found = _plans.get(slot)
    if found is None or found[0] is not stmt:
        found = _plans[slot] = (stmt, _compile(conn, stmt, keys))
    return found[1]


def _raw(conn: Connection) -> Any:
    """The ``sqlite3`` connection under ``conn``, or None on any other driver. The shop's
    writer and reader connections on SQLite carry it (``RAW_SQLITE``): SQLAlchemy's property
    chain to it cost ~1 us per statement."""
    raw = getattr(conn, RAW_SQLITE, None)
    if raw is not None:
        return raw
    if conn.dialect.driver != "pysqlite":
        return None
    return conn.connection.driver_connection


def run(conn: Connection, stmt: UpdateBase, params: Mapping[str, Any] | Sequence[Any]) -> int:
    """Execute a module-level INSERT/UPDATE/DELETE with one parameter dict (or a list of them,
    all with the same keys) and return the row count. On the ``sqlite3`` driver it runs
    precompiled (see the module docstring); otherwise, or when the statement needs SQLAlchemy
    at run time, through ``conn.execute``. Only for statements built once: plans are cached
    by statement identity."""
    raw = _raw(conn)
    if raw is not None:
        if isinstance(params, Mapping):
            plan = _plan(conn, stmt, tuple(params))
            if plan is not None:
                return int(raw.execute(plan.sql, plan.args(params)).rowcount)
        elif params and isinstance(params[0], Mapping):
            keys = tuple(params[0])
            plan = _plan(conn, stmt, keys)
            if plan is not None and all(tuple(row) == keys for row in params):
                return int(raw.executemany(plan.sql, [plan.args(row) for row in params]).rowcount)
    return int(conn.execute(stmt, params).rowcount)


@dataclass(frozen=True, slots=True)
class _Query:
    """One SELECT compiled for the ``sqlite3`` driver, for one set of parameter keys."""

    sql: str
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    results: tuple[Callable[[Any], Any] | None, ...] | None  # None: no column converts
    row: Callable[..., Any]  # a namedtuple class: the columns by name, like a Row

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [
            (values[name] if proc is None else proc(values[name])) for name, proc in self.params
        ]

    def rows(self, cursor: Any) -> list[Any]:
        make, results = self.row, self.results
        if results is None:
            return [make(*row) for row in cursor]
        return [
            make(*[(v if p is None else p(v)) for v, p in zip(row, results, strict=True)])
            for row in cursor
        ]


# namedtuple called through a plain name: called by its own name with field names known only at
# run time, mypy takes it for a declaration, and mypyc compiles no assignment for it.
_row_class: Callable[[str, list[str]], Callable[..., Any]] = namedtuple

_queries: dict[tuple[int, tuple[str, ...]], tuple[Select[Any], _Query | None]] = {}


def _compile_query(conn: Connection, stmt: Select[Any], keys: tuple[str, ...]) -> _Query | None:
    compiled: Any = stmt.compile(dialect=conn.dialect)
    if compiled.positiontup is None or compiled.literal_execute_params:
        return None
    if compiled.post_compile_params or set(compiled.positiontup) != set(keys):
        return None
    processors = compiled._bind_processors
    params = tuple((name, processors.get(name)) for name in compiled.positiontup)
    names, results = [], []
    for keyname, _name, _objects, type_ in compiled._result_columns:
        names.append(keyname)
        results.append(type_._cached_result_processor(conn.dialect, None))
    if len(set(names)) != len(names) or not all(name.isidentifier() for name in names):
        return None
    row = _row_class("Row", names)
    converted = tuple(results) if any(p is not None for p in results) else None
    return _Query(compiled.string, params, converted, row)


def fetch(conn: Connection, stmt: Select[Any], params: Mapping[str, Any]) -> list[Any]:
    """The rows of a module-level SELECT (built once: plans are cached by identity). On the
    ``sqlite3`` driver it runs precompiled, rows as named tuples; otherwise through
    ``conn.execute``, rows as SQLAlchemy ``Row`` objects (same attribute access)."""
    raw = _raw(conn)
    if raw is not None:
        keys = tuple(params)
        slot = (id(stmt), keys)
        found = _queries.get(slot)
        if found is None or found[0] is not stmt:
            found = _queries[slot] = (stmt, _compile_query(conn, stmt, keys))
        query = found[1]
        if query is not None:
            return query.rows(raw.execute(query.sql, query.args(params)))
    return list(conn.execute(stmt, params))


def fetch_first(conn: Connection, stmt: Select[Any], params: Mapping[str, Any]) -> Any | None:
    """The first row of :func:`fetch`, or None."""
    rows = fetch(conn, stmt, params)
    return rows[0] if rows else None


def insert_ignore(
    conn: Connection, table: Table, values: dict[str, Any], key: str = "idempotency_key"
) -> bool:
    """Insert a row unless one with the same ``key`` exists; True when this call inserted it.
    Python-side column defaults (timestamps) are filled in as SQLAlchemy would."""
    return run(conn, _insert_ignore(conn.dialect.name, table, key), values) == 1


class _Claimed(Exception):
    """The key is claimed already: ``row`` is what it holds (a repeat, or a tombstone)."""

    def __init__(self, row: Any) -> None:
        super().__init__()
        self.row = row


def claim_once(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    apply: Callable[[str | None], None],
) -> Any | None:
    """Claim ``values["idempotency_key"]`` with the row ``values`` and run ``apply`` (the
    effect, which raises a business failure), both or neither; None when this call did them,
    else the row already recorded under the key (a repeat, or a tombstone: nothing applied).

    On SQLite (serialised writers) the key is claimed after the effect, so a failing ``apply``
    raises before anything is written; ``apply(key)`` then checks the claim itself: its first
    write is guarded by the key being unclaimed (:func:`first_write`), and it calls
    :func:`check_claim` before raising a failure of its own (its first write changed nothing,
    or it failed before writing). The lookup rides the first write (a ``NOT EXISTS`` on the
    ledger's primary key, ~0.5 us) instead of a query of its own before it (~6 us with its
    round trip). Elsewhere the claim comes first, so that a concurrent call with the same key
    waits on it (see the module docstring), and ``apply(None)`` writes unguarded."""
    key = values["idempotency_key"]
    if conn.dialect.name == "sqlite":
        try:
            apply(key)
        except _Claimed as claimed:
            return claimed.row
        if not insert_ignore(conn, table, values):  # pragma: no cover - one writer at a time
            raise RuntimeError(f"{table.name} {key!r} was claimed during the call")
        return None
    if not insert_ignore(conn, table, values):
        return load_by_key(conn, table, key)
    apply(None)
    return None


def check_claim(conn: Connection, table: Table, claim: str | None) -> None:
    """Inside ``claim_once``'s ``apply(claim)``, before it raises a failure: when ``claim``
    holds a row already, hand that row to ``claim_once`` (the call is a repeat, or a tombstone
    beat it: nothing applied, nothing to fail). A no-op where the claim came first (None)."""
    if claim is not None:
        recorded = find_by_key(conn, table, claim)
        if recorded is not None:
            raise _Claimed(recorded)


@cache
def unclaimed(stmt: Update, table: Table) -> Update:
    """``stmt`` guarded by the claim being free: ``AND NOT EXISTS (SELECT 1 FROM table WHERE
    idempotency_key = :claim)`` (see :func:`first_write`)."""
    taken = select(table.c.idempotency_key).where(table.c.idempotency_key == bindparam("claim"))
    return stmt.where(~taken.exists())


def first_write(
    conn: Connection, stmt: Update, table: Table, claim: str | None, **params: Any
) -> int:
    """An effect's first write inside ``claim_once``'s ``apply(claim)``: ``stmt`` (a guarded
    UPDATE), and on SQLite only while ``claim`` is free in ``table``; how many rows it
    changed. When none, :func:`check_claim` has run: the claim is free, and the failure is
    ``stmt``'s own guard's."""
    if claim is None:
        return execute(conn, stmt, **params)
    changed = execute(conn, unclaimed(stmt, table), claim=claim, **params)
    if changed == 0:
        check_claim(conn, table, claim)
    return changed


def write_lines(
    conn: Connection,
    stmt: Update,
    table: Table,
    claim: str | None,
    lines: Sequence[OrderLine],
    refused: Callable[[OrderLine], None],
) -> None:
    """``stmt`` (a guarded UPDATE of one product's units, by ``product`` and ``qty``) for each
    of ``lines`` in their order (sorted by product id: a fixed lock order), inside
    ``claim_once``'s ``apply(claim)``: the first line's write is the effect's first write, so
    it checks the claim (:func:`first_write`); ``refused(line)`` is called for a line the
    guard turned down (it raises, or mends and writes that line itself)."""
    for n, line in enumerate(lines):
        params = {"product": line.product_id, "qty": line.quantity}
        if n == 0:
            changed = first_write(conn, stmt, table, claim, **params)
        else:
            changed = execute(conn, stmt, **params)
        if changed != 1:
            refused(line)


def execute(conn: Connection, stmt: Executable, **params: Any) -> int:
    """Run a guarded UPDATE (or DELETE) and return how many rows it changed (0: the guard
    said no)."""
    if isinstance(stmt, UpdateBase):
        return run(conn, stmt, params)
    return conn.execute(stmt, params).rowcount


@cache
def _by_key(table: Table) -> Select[Any]:
    return select(table).where(table.c.idempotency_key == bindparam("key"))


def load_by_key(conn: Connection, table: Table, key: str) -> Any:
    """The row recorded under ``key``, as the database has it now (precompiled on sqlite3, see
    :func:`fetch`: a compensation reads it twice, at ~60 us each through SQLAlchemy)."""
    row = fetch_first(conn, _by_key(table), {"key": key})
    if row is None:  # pragma: no cover - callers only load keys they just saw or claimed
        raise LookupError(f"no {table.name} row with key {key!r}")
    return row


def find_by_key(conn: Connection, table: Table, key: str) -> Any | None:
    return fetch_first(conn, _by_key(table), {"key": key})


def dump_lines(lines: Sequence[OrderLine]) -> list[dict[str, Any]]:
    return [line.model_dump() for line in lines]


def load_lines(data: Sequence[dict[str, Any]] | None) -> list[OrderLine]:
    return [OrderLine.model_validate(item) for item in data or ()]


ADDRESS_FIELDS = ("street", "city", "province", "postal_code", "country")


def address_values(address: Address | None) -> dict[str, str | None]:
    """An address as the ``ship_*`` columns of accounts and orders."""
    return {
        f"ship_{name}": (getattr(address, name) if address is not None else None)
        for name in ADDRESS_FIELDS
    }


# The Addresses built from rows, by their five values: an Address is immutable, so one object
# stands for every row that holds the same values. An order reads its account's row for the
# default address; the model built from it cost ~1.5 us an order, the look-up ~0.2 us. Bounded
# (cleared when full): what it holds is only a faster way to the same value.
_addresses: dict[tuple[Any, ...], Address] = {}
_ADDRESSES_MAX: Final = 4096


def row_address(row: Any) -> Address | None:
    """The ``ship_*`` columns of a row as an Address; None when they are all empty."""
    values = (
        row.ship_street,
        row.ship_city,
        row.ship_province,
        row.ship_postal_code,
        row.ship_country,
    )
    known = _addresses.get(values)
    if known is not None:
        return known
    street, city, province, postal_code, country = values
    if (
        street is None
        and city is None
        and province is None
        and postal_code is None
        and country is None
    ):
        return None
    address = Address(
        street=street, city=city, province=province, postal_code=postal_code, country=country
    )
    if len(_addresses) >= _ADDRESSES_MAX:
        _addresses.clear()
    _addresses[values] = address
    return address


def undo_once(
    conn: Connection,
    table: Table,
    *,
    forward_key: str,
    idempotency_key: str,
    order_id: str | None,
    tombstone_status: str,
    mark_undone: Executable,
    undo_line: Executable,
    what: str,
    held: str,
) -> None:
    """The compensation pattern of the line-moving participants (inventory, shipping).

    A tombstone claims ``forward_key`` when the action never happened (a late action then finds
    it and does nothing); otherwise ``mark_undone`` flips the action's row once (a repeat finds
    it flipped) and ``undo_line`` moves each line's units back. A line that cannot move back is
    a bug or a manual edit, never a race: raising rolls the undo back, so the saga's
    compensation retries and, if it keeps failing, the saga ends FAILED for an operator.
    The row under ``forward_key`` is the caller's to read (:func:`load_by_key`), if it wants
    it: a compensation riding its step's transition does not.
    """
    tombstoned = insert_ignore(
        conn,
        table,
        {
            "idempotency_key": forward_key,
            "order_id": order_id,
            "items": [],
            "status": tombstone_status,
            "compensation_key": idempotency_key,
        },
    )
    if not tombstoned and execute(
        conn, mark_undone, forward=forward_key, compensation=idempotency_key
    ):
        row = load_by_key(conn, table, forward_key)
        for line in load_lines(row.items):
            if execute(conn, undo_line, product=line.product_id, qty=line.quantity) != 1:
                raise RuntimeError(
                    f"cannot {what} {line.quantity} x {line.product_id}: not enough {held} units"
                )
