"""The gateway's side of separate services: the shop read through their HTTP APIs, and the
dispatcher that carries the saga's commands to them.

:class:`RemoteShop` is :class:`checkout.participants.ShopService` over the services' APIs
(payment: accounts and balances; inventory: catalogue, stock and prices; shipping: units
shipped), so every gateway route (``/inventory``, ``/products``, ``/balances``, ``/accounts``,
``POST /reset``) and the saga's ``validate_order`` step work the same on either layout. A
service that cannot be reached raises :class:`~checkout.dbfaults.ShopUnavailable`: a 503 for a
read, a transient failure (retried with the step's policy) in a saga step. A gateway read is
an HTTP call per service: pooled connections (one ``aiohttp.ClientSession``), explicit
timeouts.

A read is idempotent, so a read whose connection could not be made in time (a loaded machine:
the service's loop did not get to it) or whose pooled connection the service had closed is
tried again, with backoff, until the read's whole budget (``timeout``) is spent: a 503 then
means the service did not answer for that long, not that one connect lost a race. A refused
connection (nothing listens: the service is down) is not retried. The catalogue reads of
concurrent orders (an account, a set of prices) share one request while it is in flight:
eight first requests of one order make two reads, not sixteen.

:func:`open_dispatcher` makes the transport the gateway's engine sends the saga's commands
through (``Engine(transport=...)``): HTTP, or RabbitMQ, over which a saga waiting for a reply
is parked (it holds no task) until the reply or its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from checkout.dbexec import ShopExecutor
from checkout.dbfaults import ShopUnavailable
from checkout.domain.models import (
    AccountInfo,
    OrderInput,
    ProductInfo,
    UserNotFound,
    ValidatedOrder,
)
from checkout.domain.rules import order_total, price_lines
from checkout.participants.orders import Catalogue
from checkout.participants.shop import ShopTotals
from sagaway.transport import Dispatcher

log = logging.getLogger("checkout.remote")

SERVICE_NAMES = ("payment", "inventory", "shipping")
# How long the catalogue read that priced a new order stands for its ``validate_order`` step
# (see ``RemoteShop.validate_order``), and how many such reads are kept at most.
CATALOGUE_REUSE_SECONDS = 2.0
CATALOGUE_REUSE_MAX = 4096

# Connect-phase failures a read tries again (within its budget): the connection was not made in
# time, or a kept-alive one was closed by the service before it read the request. Not a refused
# connection: nothing listens there, the service is down.
RETRIED_READ_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerDisconnectedError,
)
FIRST_BACKOFF = 0.05  # seconds before the second attempt; doubled each time, up to MAX_BACKOFF
MAX_BACKOFF = 0.5


class RemoteShop:
    """The shop's reads and demo reset, answered by the three services' HTTP APIs."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        orders: ShopExecutor | None = None,
        admin_token: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.urls = {name: urls[name].rstrip("/") for name in SERVICE_NAMES}
        self._orders = orders  # the gateway's own database: a reset empties its orders too
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._budget = timeout  # a request's whole time, every attempt of a read included
        self._connect = connect_timeout  # one attempt's connect
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        # (service, path, params) -> the catalogue read in flight, shared by its callers
        self._in_flight: dict[tuple[str, str, tuple[tuple[str, str], ...]], asyncio.Task[Any]] = {}
        self.attempts = 0  # HTTP requests made (tests read it)
        # (customer, products) -> [read at (monotonic), the catalogue, reads not reused yet]
        self._recent: dict[tuple[str, tuple[str, ...]], list[Any]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # aiohttp, as the HTTP transport: a fraction of httpx's CPU per request (see
        # benchmarks/http_client.py), and the gateway makes a few reads per order.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=64),
            )
        return self._session

    async def _request(
        self,
        method: str,
        service: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        *,
        may_be_missing: bool = False,
    ) -> Any:
        """One call; a ``GET`` is tried again after a connect-phase failure (see the module
        docstring) while its budget lasts. A 404 is None only where the path names a resource
        that may not exist (``may_be_missing``); on any other path it means the port is not
        the service's (another process took it, a wrong URL), and the service is unavailable."""
        url = self.urls[service] + path
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        backoff = FIRST_BACKOFF
        while True:
            left = deadline - loop.time()
            timeout = aiohttp.ClientTimeout(total=left, connect=min(self._connect, left))
            try:
                return await self._attempt(method, url, service, params, timeout, may_be_missing)
            except RETRIED_READ_ERRORS as exc:
                left = deadline - loop.time()
                if method != "GET" or left <= backoff:
                    log.warning("%s %s: %r (gave up)", method, url, exc)
                    raise ShopUnavailable(f"The {service} service is unavailable") from exc
                log.info("%s %s: %r; trying again", method, url, exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # backoff, jittered
                backoff = min(backoff * 2, MAX_BACKOFF)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("%s %s: %r", method, url, exc)
                raise ShopUnavailable(f"The {service} service is unavailable") from exc

    async def _attempt(
        self,
        method: str,
        url: str,
        service: str,
        params: list[tuple[str, str]] | None,
        timeout: aiohttp.ClientTimeout,
        may_be_missing: bool,
    ) -> Any:
        self.attempts += 1
        async with self._client().request(method, url, params=params, timeout=timeout) as response:
            if response.status == 404 and may_be_missing:
                return None
            if response.status >= 400:
                text = await response.text()
                log.warning("%s %s: HTTP %s %s", method, url, response.status, text[:300])
                raise ShopUnavailable(f"The {service} service is unavailable")
            return await response.json()

    async def _get(
        self,
        service: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        *,
        may_be_missing: bool = False,
    ) -> Any:
        return await self._request("GET", service, path, params, may_be_missing=may_be_missing)

    async def _shared_get(
        self,
        service: str,
        path: str,
        params: list[tuple[str, str]] | None = None,
        *,
        may_be_missing: bool = False,
    ) -> Any:
        """``_get``, one request for every caller asking the same while it is in flight. Only
        for the catalogue (prices, an account) an order is priced from: a caller may get an
        answer read a moment before it asked, which a read after one's own write (balances,
        stock) must not."""
        key = (service, path, tuple(params or ()))
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(
                self._get(service, path, params, may_be_missing=may_be_missing)
            )
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shield: a caller cancelled (its client went away) does not cancel the others' read
        return await asyncio.shield(task)

    def _forget(
        self, key: tuple[str, str, tuple[tuple[str, str], ...]], task: asyncio.Task[Any]
    ) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure every caller already got is not "unhandled"

    # ---- what ShopService offers

    async def load_demo_data(self) -> bool:
        """Each service loads its own share on its first start."""
        return False

    async def reset_demo_data(self) -> None:
        """Every service back to its share of the demo data, then the gateway's orders."""
        await asyncio.gather(*(self._request("POST", name, "/reset") for name in SERVICE_NAMES))
        if self._orders is not None:
            from checkout.participants.shop import reset_orders

            await self._orders.write(reset_orders)

    async def list_products(self) -> list[ProductInfo]:
        catalogue, shipped = await asyncio.gather(
            self._get("inventory", "/products"), self._get("shipping", "/shipped")
        )
        out: dict[str, int] = shipped["shipped"]
        return [
            ProductInfo(
                id=p["product_id"],
                name=p["name"],
                price_cents=p["price_cents"],
                stock=p["stock"],
                reserved=p["reserved"] - out.get(p["product_id"], 0),
                shipped=out.get(p["product_id"], 0),
            )
            for p in catalogue["products"]
        ]

    async def get_product(self, product_id: str) -> ProductInfo | None:
        return next((p for p in await self.list_products() if p.id == product_id), None)

    async def inventory(self) -> dict[str, int]:
        data = await self._get("inventory", "/inventory")
        return dict(data["inventory"])

    async def list_accounts(self) -> list[AccountInfo]:
        data = await self._get("payment", "/accounts")
        return [AccountInfo.model_validate(a) for a in data["accounts"]]

    async def get_account(self, account_id: str) -> AccountInfo | None:
        path = f"/accounts/{quote(account_id, safe='')}"
        data = await self._shared_get("payment", path, may_be_missing=True)
        return None if data is None else AccountInfo.model_validate(data)

    async def balances(self) -> dict[str, int]:
        data = await self._get("payment", "/balances")
        return dict(data["balances_cents"])

    async def prices(self, product_ids: list[str]) -> dict[str, int]:
        if not product_ids:
            return {}
        data = await self._shared_get("inventory", "/prices", [("ids", pid) for pid in product_ids])
        return dict(data["prices_cents"])

    async def _read_catalogue(self, customer_id: str, product_ids: list[str]) -> Catalogue:
        account, prices = await asyncio.gather(
            self.get_account(customer_id), self.prices(product_ids)
        )
        return Catalogue(prices=prices, account=account)

    async def catalogue(self, customer_id: str, product_ids: list[str]) -> Catalogue:
        """Prices and account for pricing a new order (the gateway's OrderService); kept a
        moment for the order's ``validate_order`` step."""
        found = await self._read_catalogue(customer_id, product_ids)
        key, now = (customer_id, tuple(product_ids)), time.monotonic()
        recent = self._recent.pop(key, None)
        unused = (
            recent[2] if recent is not None and now - recent[0] < CATALOGUE_REUSE_SECONDS else 0
        )
        if len(self._recent) >= CATALOGUE_REUSE_MAX:  # the oldest first (insertion order)
            del self._recent[next(iter(self._recent))]
        self._recent[key] = [now, found, unused + 1]
        return found

    def _reuse(self, customer_id: str, product_ids: list[str]) -> Catalogue | None:
        """The catalogue read for pricing an order of this customer and these products less
        than ``CATALOGUE_REUSE_SECONDS`` ago, once per such read; None if there is none."""
        key = (customer_id, tuple(product_ids))
        recent = self._recent.get(key)
        if recent is None:
            return None
        if time.monotonic() - recent[0] >= CATALOGUE_REUSE_SECONDS:
            del self._recent[key]
            return None
        recent[2] -= 1
        if recent[2] <= 0:
            del self._recent[key]
        found: Catalogue = recent[1]
        return found

    async def validate_order(self, order: OrderInput) -> ValidatedOrder:
        """The ``validate_order`` step, as :func:`checkout.participants.shop.validate_order`
        decides it, on the services' answers.

        The order was priced (``catalogue``) a moment ago from the same two reads (the account
        at the payment service, the prices at inventory): the step decides on those answers
        when they are under ``CATALOGUE_REUSE_SECONDS`` old, rather than asking both services
        again, which halves the services' read traffic per order. Each read stands for one
        validation at most; an order validated later (a saga resumed after a crash, a draft
        checked out later) reads them afresh."""
        product_ids = sorted({item.product_id for item in order.items})
        catalogue = self._reuse(order.customer_id, product_ids)
        if catalogue is None:
            catalogue = await self._read_catalogue(order.customer_id, product_ids)
        if catalogue.account is None:
            raise UserNotFound(order.customer_id)
        lines = price_lines(order.items, dict(catalogue.prices))
        return ValidatedOrder(
            order_id=order.order_id,
            customer_id=order.customer_id,
            lines=lines,
            total_cents=order_total(lines),
            shipping_address=order.shipping_address or catalogue.account.shipping_address,
        )

    async def totals(self) -> ShopTotals:
        money, units = await asyncio.gather(
            self._get("payment", "/totals"), self._get("inventory", "/totals")
        )
        return ShopTotals(money_cents=int(money["money_cents"]), units=dict(units["units"]))


def open_dispatcher(
    transport: str, urls: Mapping[str, str], rabbitmq_url: str, token: str | None = None
) -> Dispatcher:
    """The dispatcher of ``transport`` (``http`` or ``rabbitmq``); over HTTP every command
    carries ``token`` (the services' admin token) as its bearer."""
    if transport == "http":
        from sagaway.transport.http import HttpDispatcher

        return HttpDispatcher({name: urls[name] for name in SERVICE_NAMES}, token=token)
    if transport == "rabbitmq":
        from sagaway.transport.rabbitmq import RabbitDispatcher

        return RabbitDispatcher(rabbitmq_url)
    raise ValueError(f"unknown transport {transport!r}: use inprocess, http or rabbitmq")


__all__ = ["RemoteShop", "open_dispatcher"]
