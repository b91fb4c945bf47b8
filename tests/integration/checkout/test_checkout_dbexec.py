"""The shop executors (checkout.dbexec): shop writes inside the SQLite saga store's group commit,
each in its own savepoint; SQLAlchemy can never end the store's transaction; which executor a
configuration gets."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from checkout.db import Database, ProductRow, migrate, open_database
from checkout.dbexec import EngineExecutor, StoreExecutor, open_executor, shares_file
from checkout.domain import InsufficientFunds
from checkout.participants import CheckoutParticipants
from checkout.participants import payment as payment_ops
from checkout.participants._sql import table_of
from sagaway.store import open_store
from sagaway.store.sqlite import SQLiteStore

products = table_of(ProductRow)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'one.db'}")
    await migrate(database)
    yield database
    await database.dispose()


@pytest.fixture
async def store_exec(db: Database, tmp_path: Path) -> AsyncIterator[StoreExecutor]:
    executor = await open_executor(db, SQLiteStore(f"sqlite:///{tmp_path / 'one.db'}"))
    assert isinstance(executor, StoreExecutor)
    await CheckoutParticipants.from_executor(executor).shop.load_demo_data()
    yield executor
    await executor.close()


def _add_product(conn: Connection, product_id: str) -> str:
    conn.execute(insert(products), {"id": product_id, "name": "x", "price_cents": 1, "stock": 1})
    return product_id


def _add_then_fail(conn: Connection, product_id: str) -> None:
    _add_product(conn, product_id)
    raise InsufficientFunds("no")


def _add_then_end_transaction(conn: Connection, product_id: str) -> str:
    _add_product(conn, product_id)
    conn.commit()  # what SQLAlchemy would do at the end of a unit of work
    conn.rollback()
    return product_id


def _product_ids(conn: Connection) -> list[str]:
    return list(conn.execute(select(products.c.id).order_by(products.c.id)).scalars())


async def test_a_business_failure_rolls_back_only_its_own_savepoint(
    store_exec: StoreExecutor,
) -> None:
    store = store_exec._store
    batches, operations = store.stats.batches, store.stats.operations
    outcomes = await asyncio.gather(
        store_exec.write(_add_product, "a"),
        store_exec.write(_add_then_fail, "b"),
        store_exec.write(payment_ops.charge, "k-ok", "o1", "user_1", 500),
        store_exec.write(payment_ops.charge, "k-broke", "o2", "user_3", 10**9),
        store_exec.write(_add_product, "c"),
        return_exceptions=True,
    )
    # One batch, one transaction, one COMMIT for all five.
    assert (store.stats.batches - batches, store.stats.operations - operations) == (1, 5)
    assert outcomes[0] == "a"
    assert isinstance(outcomes[1], InsufficientFunds)
    assert isinstance(outcomes[3], InsufficientFunds)
    assert outcomes[4] == "c"
    ids = await store_exec.read(_product_ids)
    assert {"a", "c"} <= set(ids)
    assert "b" not in ids
    # The failed charge left nothing behind (no claim, no debit); the other one is durable.
    assert await store_exec.read(payment_ops.get_payment, "k-broke") is None
    assert await store_exec.read(payment_ops.get_payment, "k-ok") is not None
    shop = CheckoutParticipants.from_executor(store_exec).shop
    balances = await shop.balances()
    assert (balances["user_1"], balances["user_3"]) == (100_000 - 500, 20_000)


async def test_sqlalchemy_cannot_end_the_store_transaction(store_exec: StoreExecutor) -> None:
    """commit()/rollback() on the wrapped connection reach no further than SQLAlchemy: the
    store's batch transaction stays open and commits everything once."""
    first, second = await asyncio.gather(
        store_exec.write(_add_then_end_transaction, "x"),
        store_exec.write(_add_product, "y"),
    )
    assert (first, second) == ("x", "y")
    ids = await store_exec.read(_product_ids)
    assert {"x", "y"} <= set(ids)


async def test_writes_are_durable_for_other_connections(
    store_exec: StoreExecutor, tmp_path: Path
) -> None:
    await store_exec.write(_add_product, "durable")
    conn = sqlite3.connect(tmp_path / "one.db")
    try:
        assert conn.execute("SELECT 1 FROM products WHERE id = 'durable'").fetchone() == (1,)
    finally:
        conn.close()


async def test_threaded_reads(db: Database, tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'one.db'}")
    await store.open()
    executor = StoreExecutor(store, close_store=True, inline_reads=False)
    try:
        await executor.write(_add_product, "t")
        assert "t" in await executor.read(_product_ids)
    finally:
        await executor.close()


async def test_which_executor(db: Database, tmp_path: Path) -> None:
    same = open_store(f"sqlite:///{tmp_path / 'one.db'}")
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    assert shares_file(db, same)
    assert not shares_file(db, other)
    assert not shares_file(db, open_store("memory://"))
    assert isinstance(await open_executor(db, other), EngineExecutor)
    assert isinstance(await open_executor(db), EngineExecutor)
    executor = await open_executor(db, same)
    assert isinstance(executor, StoreExecutor)
    await executor.close()


async def test_a_database_error_fails_only_its_operation(store_exec: StoreExecutor) -> None:
    """A constraint violation (raised by SQLAlchemy as IntegrityError) rolls back its own
    savepoint; the connection stays usable in this batch and the next."""
    await store_exec.write(_add_product, "dup")
    outcomes = await asyncio.gather(
        store_exec.write(_add_product, "before"),
        store_exec.write(_add_product, "dup"),
        store_exec.write(_add_product, "after"),
        return_exceptions=True,
    )
    assert outcomes[0] == "before"
    assert isinstance(outcomes[1], IntegrityError)
    assert outcomes[2] == "after"
    assert await store_exec.write(_add_product, "next batch") == "next batch"
    ids = await store_exec.read(_product_ids)
    assert {"dup", "before", "after", "next batch"} <= set(ids)
