"""The gateway's RemoteShop: the catalogue read that priced an order stands for that order's
``validate_order`` step (once, and only while fresh), so the services are read twice per order,
not four times. Against a real HTTP server standing in for payment and inventory."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from checkout import remote
from checkout.domain.models import OrderInput, OrderLine, UserNotFound
from checkout.remote import RemoteShop


class Services:
    """Payment's ``/accounts/{id}`` and inventory's ``/prices``, counting the reads."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.price_cents = 1000
        self.accounts = {"user_1"}

    async def account(self, request: web.Request) -> web.Response:
        account_id = request.match_info["account_id"]
        self.reads.append(f"account {account_id}")
        if account_id not in self.accounts:
            return web.json_response({"detail": "not found"}, status=404)
        body: dict[str, Any] = {
            "id": account_id,
            "name": "Ann",
            "balance_cents": 10_000,
            "shipping_address": {"street": "1 Main St", "city": "Toronto"},
        }
        return web.json_response(body)

    async def prices(self, request: web.Request) -> web.Response:
        ids = request.query.getall("ids")
        self.reads.append(f"prices {','.join(ids)}")
        return web.json_response({"prices_cents": {pid: self.price_cents for pid in ids}})


@pytest.fixture
async def services() -> AsyncIterator[tuple[Services, str]]:
    state = Services()
    app = web.Application()
    app.router.add_get("/accounts/{account_id}", state.account)
    app.router.add_get("/prices", state.prices)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def order(order_id: str, customer: str = "user_1") -> OrderInput:
    return OrderInput(
        order_id=order_id,
        customer_id=customer,
        items=[OrderLine(product_id="product_1", quantity=2)],
    )


async def test_an_order_priced_a_moment_ago_is_validated_without_reading_again(
    services: tuple[Services, str],
) -> None:
    state, url = services
    shop = RemoteShop({"payment": url, "inventory": url, "shipping": url})
    try:
        await shop.catalogue("user_1", ["product_1"])
        assert len(state.reads) == 2
        validated = await shop.validate_order(order("o1"))
        assert validated.total_cents == 2000
        assert len(state.reads) == 2, "the pricing read stood for the validation"
        # That read served one validation: the next one (a resumed saga, say) reads afresh.
        state.price_cents = 1500
        again = await shop.validate_order(order("o1"))
        assert again.total_cents == 3000
        assert len(state.reads) == 4
    finally:
        await shop.close()


async def test_each_pricing_read_stands_for_one_validation(
    services: tuple[Services, str],
) -> None:
    state, url = services
    shop = RemoteShop({"payment": url, "inventory": url, "shipping": url})
    try:
        await shop.catalogue("user_1", ["product_1"])
        await shop.catalogue("user_1", ["product_1"])
        await shop.validate_order(order("o1"))
        await shop.validate_order(order("o2"))
        assert len(state.reads) == 4
        await shop.validate_order(order("o3"))
        assert len(state.reads) == 6
    finally:
        await shop.close()


async def test_a_stale_read_is_not_reused_and_an_unknown_customer_still_fails(
    services: tuple[Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = services
    shop = RemoteShop({"payment": url, "inventory": url, "shipping": url})
    try:
        monkeypatch.setattr(remote, "CATALOGUE_REUSE_SECONDS", 0.0)  # every read is too old
        await shop.catalogue("user_1", ["product_1"])
        await shop.validate_order(order("o1"))
        assert len(state.reads) == 4
        monkeypatch.undo()
        await shop.catalogue("ghost", ["product_1"])
        with pytest.raises(UserNotFound):
            await shop.validate_order(order("o2", customer="ghost"))
        assert len(state.reads) == 6, "the read that found no account stood for the step"
    finally:
        await shop.close()
