"""The gateway's reads of separate services (``checkout.remote.RemoteShop``) against the real
service apps, served by uvicorn in the test's loop.

A read is idempotent: one whose connect was not answered in time is tried again within the
read's budget (CI saw eight concurrent first requests of one order answer 503 because their
sixteen connects timed out together on a loaded machine); a refused connect (nothing listens)
is the service down, answered at once. Concurrent identical catalogue reads share one request.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_helpers import serve_in_loop
from fastapi import FastAPI

import ports
from checkout.dbfaults import ShopUnavailable
from checkout.remote import SERVICE_NAMES, RemoteShop
from checkout.services.server import create_service_app
from checkout.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _urls(**served: str) -> dict[str, str]:
    base = {name: f"http://127.0.0.1:{ports.free_port()}" for name in SERVICE_NAMES}
    return {**base, **served}


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Payment and inventory served (shipping is not read by the catalogue)."""
    async with (
        serve_in_loop(_app("payment", tmp_path)) as payment,
        serve_in_loop(_app("inventory", tmp_path)) as inventory,
    ):
        yield _urls(payment=payment, inventory=inventory)


def _app(name: str, tmp_path: Path) -> FastAPI:
    return create_service_app(
        name, Settings(database_url=f"sqlite:///{tmp_path / name}.db", demo=True)
    )


@pytest.fixture
def full_backlog() -> Iterator[socket.socket]:
    """A listening socket whose accept queue is full: the kernel leaves a new connect
    unanswered (its SYN dropped) until somebody accepts, as a service whose loop is too busy
    to accept does once its backlog fills."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
            _, writable, _ = select.select([], [filler], [], 0.5)
            if not writable:  # this one was not answered: the queue is full
                break
        else:
            pytest.fail("the kernel answered every connect: no full accept queue here")
        yield listener
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_concurrent_catalogue_reads_share_one_request(services: dict[str, str]) -> None:
    shop = RemoteShop(services)
    try:
        catalogues = await asyncio.gather(
            *(shop.catalogue("user_1", ["product_1"]) for _ in range(8))
        )
        assert {c.prices["product_1"] for c in catalogues} == {5000}
        assert {c.account.id for c in catalogues if c.account} == {"user_1"}
        assert shop.attempts == 2, "one account read and one prices read for the eight"
        await shop.catalogue("user_1", ["product_1"])
        assert shop.attempts == 4, "a read after the others ended is a request of its own"
    finally:
        await shop.close()


async def test_a_read_whose_connect_timed_out_is_tried_again(
    full_backlog: socket.socket, tmp_path: Path
) -> None:
    port = full_backlog.getsockname()[1]
    shop = RemoteShop(_urls(inventory=f"http://127.0.0.1:{port}"), timeout=30, connect_timeout=0.2)
    try:
        read = asyncio.ensure_future(shop.prices(["product_1"]))
        deadline = time.monotonic() + 20
        while shop.attempts < 2:  # the first connect timed out, the read tries again
            assert not read.done(), read.result()
            assert time.monotonic() < deadline, "no second attempt"
            await asyncio.sleep(0.05)
        async with serve_in_loop(_app("inventory", tmp_path), full_backlog):
            assert await read == {"product_1": 5000}
    finally:
        await shop.close()


async def test_a_refused_read_is_the_service_down_at_once() -> None:
    shop = RemoteShop(_urls(), timeout=30)
    try:
        with pytest.raises(ShopUnavailable, match="inventory service is unavailable"):
            await shop.prices(["product_1"])
        assert shop.attempts == 1, "nothing listens: no retry"
    finally:
        await shop.close()


async def test_a_port_that_answers_404_to_a_route_is_not_the_service(
    services: dict[str, str], tmp_path: Path
) -> None:
    """Another process on the inventory's port (here the shipping service, which has no
    ``/prices``): the gateway's read says the inventory is unavailable (a 503 to the customer),
    not "no prices" (a 500 once the missing answer is read). A 404 still means "no such
    account" where an account is asked for by id."""
    async with serve_in_loop(_app("shipping", tmp_path)) as shipping:
        shop = RemoteShop({**services, "inventory": shipping})
        try:
            with pytest.raises(ShopUnavailable, match="inventory service is unavailable"):
                await shop.prices(["product_1"])
            with pytest.raises(ShopUnavailable, match="inventory service is unavailable"):
                await shop.catalogue("user_1", ["product_1"])
            assert await shop.get_account("no_such_user") is None
        finally:
            await shop.close()
