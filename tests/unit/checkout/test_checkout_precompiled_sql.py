"""The precompiled path of ``checkout.participants._sql.run``: on the ``sqlite3`` driver the hot
writes skip SQLAlchemy's execution machinery, and must write exactly what SQLAlchemy writes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Connection

from checkout.db import Base
from checkout.participants import _sql, inventory, orders, payment, shipping, shop
from checkout.participants._sql import run, table_of

TIMES = {"created_at", "updated_at"}


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every shop table's rows, timestamps only checked for being set."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:
        rows = []
        for row in conn.execute(select(table)).mappings():
            assert all(row[c] is not None for c in TIMES if c in row), (table.name, row)
            rows.append(tuple(v for k, v in sorted(row.items()) if k not in TIMES))
        tables[table.name] = sorted(rows, key=repr)
    return tables


@pytest.fixture
def conns() -> Iterator[tuple[Connection, Connection]]:
    engines = [create_engine("sqlite://") for _ in range(2)]
    for engine in engines:
        Base.metadata.create_all(engine)
    with engines[0].begin() as fast, engines[1].begin() as slow:
        yield fast, slow
    for engine in engines:
        engine.dispose()


def _writes(conn: Connection, execute: Any) -> None:
    products, accounts = inventory.products, payment.accounts
    execute(
        conn,
        _sql._insert_ignore("sqlite", products, "id"),
        {"id": "p1", "name": "P", "price_cents": 250, "stock": 10, "reserved": 0},
    )
    execute(
        conn,
        _sql._insert_ignore("sqlite", accounts, "id"),
        {"id": "u1", "name": "U", "balance_cents": 10_000},
    )
    reservation = {
        "idempotency_key": "k1",
        "order_id": "o1",
        "status": "reserved",
        "items": [{"product_id": "p1", "quantity": 2}],
    }
    assert (
        execute(
            conn,
            _sql._insert_ignore("sqlite", inventory.reservations, "idempotency_key"),
            reservation,
        )
        == 1
    )
    assert (
        execute(
            conn,
            _sql._insert_ignore("sqlite", inventory.reservations, "idempotency_key"),
            reservation,
        )
        == 0
    )
    assert execute(conn, inventory._RESERVE, {"product": "p1", "qty": 2}) == 1
    assert execute(conn, inventory._RESERVE, {"product": "p1", "qty": 99}) == 0
    assert execute(conn, shipping._SHIP, {"product": "p1", "qty": 1}) == 0  # no row yet
    assert (
        execute(
            conn,
            _sql._insert_ignore("sqlite", shipping.shipped_units, "product_id"),
            {"product_id": "p1", "quantity": 0},
        )
        == 1
    )
    assert execute(conn, shipping._SHIP, {"product": "p1", "qty": 1}) == 1
    assert execute(conn, payment._DEBIT, {"account": "u1", "amount": 500}) == 1
    assert execute(conn, inventory._MARK_RELEASED, {"forward": "k1", "compensation": "c1"}) == 1
    row = {
        "id": "o1",
        "customer_id": "u1",
        "status": "pending",
        "total_cents": 500,
        "payment_method": "card",
        "idempotency_key": None,
        "created_at": None,
        "updated_at": None,
        **_sql.address_values(None),
    }
    row["created_at"] = row["updated_at"] = orders.utcnow()
    assert execute(conn, orders._INSERT_ORDER, row) == 1
    items = [
        {"order_id": "o1", "line_no": n, "product_id": "p1", "quantity": 1, "unit_price_cents": 250}
        for n in (1, 2)
    ]
    assert execute(conn, orders._INSERT_ITEMS, items) == 2
    assert execute(conn, orders._ATTACH, {"order": "o1", "saga": "s1", "now": orders.utcnow()}) == 1
    mirror = {
        "order": "o1",
        "saga": "s1",
        "new_status": "failed",
        "new_error": "Boom",
        "now": orders.utcnow(),
    }
    assert execute(conn, orders._MIRROR, mirror) == 1
    assert execute(conn, orders._MIRROR, mirror) == 0
    assert execute(conn, orders._MIRROR_OWN, mirror) == 0  # nothing to change
    assert execute(conn, orders._MIRROR_OWN, {**mirror, "new_status": "completed"}) == 1


def test_precompiled_writes_match_sqlalchemy(conns: tuple[Connection, Connection]) -> None:
    fast, slow = conns
    _writes(fast, run)
    _writes(slow, lambda conn, stmt, params: conn.execute(stmt, params).rowcount)
    assert _snapshot(fast) == _snapshot(slow)


def test_hot_statements_take_the_precompiled_path(conns: tuple[Connection, Connection]) -> None:
    fast, _ = conns
    for stmt, keys in [
        (inventory._RESERVE, ("product", "qty")),
        (payment._DEBIT, ("account", "amount")),
        (shipping._SHIP, ("product", "qty")),
        (orders._MIRROR, ("order", "saga", "new_status", "new_error", "now")),
        (
            _sql._insert_ignore("sqlite", inventory.reservations, "idempotency_key"),
            ("idempotency_key", "order_id", "items", "status"),
        ),
    ]:
        assert _sql._plan(fast, stmt, keys) is not None, stmt
    assert table_of(orders.OrderRow) is orders.orders


def test_precompiled_reads_match_sqlalchemy(conns: tuple[Connection, Connection]) -> None:
    fast, _ = conns
    _writes(fast, run)
    run(
        fast,
        orders._INSERT_ORDER,
        {
            "id": "o2",
            "customer_id": "u1",
            "status": "pending",
            "total_cents": 500,
            "payment_method": "card",
            "idempotency_key": "k2",
            "created_at": orders.utcnow(),
            "updated_at": orders.utcnow(),
        },
    )
    for stmt, params in [
        (shop._ACCOUNT, {"account": "u1"}),
        (shop._ACCOUNT, {"account": "nobody"}),
        (shop._prices_of(2), {"p0": "p1", "p1": "p9"}),
        (orders._ORDER, {"order": "o2"}),  # datetime columns: converted like SQLAlchemy
        (orders._BY_KEY, {"key": "k2"}),
        (orders._BY_KEY, {"key": "nobody's"}),
    ]:
        got = _sql.fetch(fast, stmt, params)
        want = list(fast.execute(stmt, params))
        assert [tuple(row) for row in got] == [tuple(row) for row in want], stmt
        assert [row._fields for row in got] == [tuple(row._fields) for row in want]
        assert _sql._queries[(id(stmt), tuple(params))][1] is not None, stmt
    row = _sql.fetch_first(fast, shop._ACCOUNT, {"account": "u1"})
    assert row is not None
    assert row.balance_cents == 10_000 - 500
    assert _sql.fetch_first(fast, shop._ACCOUNT, {"account": "nobody"}) is None


def _attach_time_processors(fast: Connection) -> tuple[Any, Any]:
    """The bind processor of ``_ATTACH``'s DATETIME parameter: ours (``_sql._faster``) and
    SQLAlchemy's own."""
    compiled: Any = orders._ATTACH.compile(
        dialect=fast.dialect, column_keys=["order", "saga", "now"]
    )
    theirs = compiled._bind_processors["now"]
    return _sql._faster(fast, compiled.binds["now"], theirs), theirs


def test_datetimes_are_written_as_sqlalchemy_writes_them(
    conns: tuple[Connection, Connection],
) -> None:
    ours, theirs = _attach_time_processors(conns[0])
    assert ours is not theirs  # the fast path is taken for SQLite's DATETIME

    class Later(datetime):
        pass

    for value in [
        orders.utcnow(),
        datetime(2026, 11, 26, 23, 5, 7, 0, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-5))),
        datetime(7, 1, 2, 3, 4, 5, 999_999),
        Later(2026, 1, 1, 0, 0, 0, 1),
        date(2026, 5, 6),
        None,
    ]:
        assert ours(value) == theirs(value), value
    with pytest.raises(TypeError):
        ours("2026-01-01")


def test_a_datetime_written_twice_is_formatted_once_and_never_stale(
    conns: tuple[Connection, Connection],
) -> None:
    ours, theirs = _attach_time_processors(conns[0])
    other, _ = _attach_time_processors(conns[0])  # another column's, say
    first = datetime(2026, 11, 27, 10, 0, 0, 1, tzinfo=UTC)
    text = ours(first)
    assert ours(first) is text  # the same object again: the text kept, not formatted anew
    assert other(first) is text  # by any of them
    later = datetime(2026, 11, 27, 10, 0, 0, 2, tzinfo=UTC)
    assert ours(later) == theirs(later) != text
    assert ours(first) == theirs(first) == text  # a value written before: formatted again
    assert ours(None) == theirs(None)
    assert ours(first) == text


def test_an_address_read_from_rows_is_the_model_of_its_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``row_address`` hands out one immutable ``Address`` for rows holding the same values,
    never another's, and starts over when it has kept its fill."""
    from collections import namedtuple

    from checkout.domain.models import Address

    row = namedtuple("row", [f"ship_{name}" for name in _sql.ADDRESS_FIELDS])
    monkeypatch.setattr(_sql, "_addresses", {})
    home = row("1 Main St", "Springfield", "ON", "K1A 0B1", "CA")
    first = _sql.row_address(home)
    assert first == Address(
        street="1 Main St", city="Springfield", province="ON", postal_code="K1A 0B1", country="CA"
    )
    assert _sql.row_address(row(*home)) is first  # equal values: the same object
    elsewhere = _sql.row_address(row("1 Main St", "Springfield", "ON", "K1A 0B1", None))
    assert elsewhere == Address(
        street="1 Main St", city="Springfield", province="ON", postal_code="K1A 0B1"
    )
    assert _sql.row_address(row(None, None, None, None, None)) is None
    assert _sql.row_address(row(None, None, None, None, "CA")) == Address(country="CA")
    for n in range(_sql._ADDRESSES_MAX):
        assert _sql.row_address(row(f"{n} Side St", None, None, None, None)) == Address(
            street=f"{n} Side St"
        )
    assert len(_sql._addresses) == 3  # full: cleared, then the last ones kept
    assert _sql.row_address(home) == first


def test_a_mirror_leaves_the_saga_id_alone_where_the_row_has_it(
    conns: tuple[Connection, Connection],
) -> None:
    """``mirror_saga`` on SQLite: an order attached to its saga is updated without ``saga_id``
    in the SET (its index entry untouched), one statement; an order without its saga yet
    gets it; one of another saga is left alone; a repeat changes nothing."""
    conn = conns[0]
    seen: list[str] = []
    _sql._raw(conn).set_trace_callback(seen.append)
    for order_id, saga_id in (("o1", "s1"), ("o2", None), ("o3", "s9")):
        row = {
            "id": order_id,
            "customer_id": "u1",
            "status": "processing",
            "total_cents": 500,
            "payment_method": "card",
            "idempotency_key": None,
            "saga_id": saga_id,
            "created_at": orders.utcnow(),
            "updated_at": orders.utcnow(),
            **_sql.address_values(None),
        }
        assert run(conn, orders._INSERT_ORDER, row) == 1
    completed = orders.OrderStatus.COMPLETED
    seen.clear()
    assert orders.mirror_saga(conn, "o1", "s1", completed, None)
    assert len(seen) == 1, seen
    assert "saga_id=" not in seen[0].split("WHERE")[0], seen
    assert not orders.mirror_saga(conn, "o1", "s1", completed, None)  # a repeat
    assert orders.mirror_saga(conn, "o2", "s2", orders.OrderStatus.FAILED, "Boom")
    assert not orders.mirror_saga(conn, "o3", "s3", completed, None)  # another saga's
    found = {
        row.id: (row.status, row.saga_id, row.error) for row in conn.execute(select(orders.orders))
    }
    assert found == {
        "o1": ("completed", "s1", None),
        "o2": ("failed", "s2", "Boom"),
        "o3": ("processing", "s9", None),
    }
