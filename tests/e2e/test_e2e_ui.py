"""The web pages over HTTP (the browser suite clicks them): what they render, that every asset
comes from the app, and how bad input and refused actions answer."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

TEST_IDS = (
    "order-form",
    "scenario-happy",
    "scenario-no-stock",
    "scenario-no-funds",
    "scenario-bad-address",
    "orders-table",
    "inventory",
    "balances",
)


@pytest.fixture
def backend() -> str:
    return "sqlite"


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link"):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]


async def place(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/orders", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, object] = response.json()
    return data


async def assets_load(client: httpx.AsyncClient, page: str) -> None:
    html = (await client.get(page)).text
    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html) == [], "no absolute URL, no CDN"
    parser = _Assets()
    parser.feed(html)
    assert parser.urls
    for url in parser.urls:
        absolute = urljoin(str(client.base_url) + page, url)
        assert urlsplit(absolute).netloc == client.base_url.host
        asset = await client.get(absolute)
        assert asset.status_code == 200, url
        assert asset.content


async def test_shop_page_has_what_the_browser_tests_use(client: httpx.AsyncClient) -> None:
    await place(client, user_id="user_3", product_id="product_1", quantity=10)
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    for test_id in TEST_IDS:
        assert f'data-testid="{test_id}"' in response.text, test_id
    assert "Insufficient funds" in response.text  # the orders table
    await assets_load(client, "/")


async def test_saga_page_lanes_and_live_stream(client: httpx.AsyncClient) -> None:
    data = await place(client, user_id="user_3", product_id="product_1", quantity=1)
    saga_id = data["saga_id"]
    page = await client.get(f"/ui/sagas/{saga_id}")
    assert page.status_code == 200
    html = page.text
    steps = re.findall(
        r'data-testid="timeline-step" data-step="(\w+)" data-phase="(\w+)" data-status="(\w+)"',
        html,
    )
    assert steps == [
        ("validate_order", "forward", "SUCCEEDED"),
        ("reserve_inventory", "forward", "SUCCEEDED"),
        ("process_payment", "forward", "SUCCEEDED"),
        ("ship_order", "forward", "FAILED"),
        ("reserve_inventory", "compensation", "COMPENSATED"),
        ("process_payment", "compensation", "COMPENSATED"),
    ]
    assert f"{saga_id}:ship_order:forward" in html, "the idempotency key"
    assert "Invalid shipping address" in html
    assert 'data-testid="retry-saga"' not in html
    assert "data-live-saga" not in html, "a finished saga needs no stream"
    await assets_load(client, f"/ui/sagas/{saga_id}")
    # The stream of a finished saga: its timeline once, then end.
    async with client.stream("GET", f"/ui/sagas/{saga_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = (await stream.aread()).decode()
    assert "event: timeline\n" in body
    assert body.endswith("event: end\ndata: COMPENSATED\n\n")


async def test_saga_list_filters_and_pages(client: httpx.AsyncClient) -> None:
    ok = await place(client, user_id="user_1", product_id="product_1", quantity=1)
    bad = await place(client, user_id="user_1", product_id="product_1", quantity=500)
    html = (await client.get("/ui/sagas?status=compensated")).text
    assert f'data-saga-id="{bad["saga_id"]}"' in html
    assert f'data-saga-id="{ok["saga_id"]}"' not in html
    page1 = (await client.get("/ui/sagas?limit=1")).text
    assert f'data-saga-id="{bad["saga_id"]}"' in page1, "newest first"
    assert 'rel="next"' in page1
    page2 = (await client.get("/ui/sagas?limit=1&offset=1")).text
    assert f'data-saga-id="{ok["saga_id"]}"' in page2
    assert (await client.get("/ui/sagas?name=nothing-like-it")).text.count("data-saga-id") == 0
    fragment = await client.get("/ui/sagas?fragment=true")
    assert "<html" not in fragment.text
    assert 'data-testid="saga-list"' in fragment.text


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/ui/sagas?status=bogus", 422),
        ("/ui/sagas?limit=0", 422),
        ("/ui/sagas/no-such-saga", 404),
        ("/ui/sagas/no-such-saga/events", 404),
        ("/ui/sagas/events?status=bogus", 422),
        ("/ui/inbox?limit=0", 422),
        ("/ui/inbox/events?offset=-1", 422),
        ("/ui/static/../../etc/passwd", 404),
        ("/ui/static/nope.js", 404),
        ("/shop/static/nope.js", 404),
    ],
)
async def test_bad_input_is_a_clear_4xx(client: httpx.AsyncClient, url: str, status: int) -> None:
    response = await client.get(url)
    assert response.status_code == status
    assert response.json()["detail"]


async def test_refused_actions_say_why(client: httpx.AsyncClient) -> None:
    data = await place(client, user_id="user_1", product_id="product_1", quantity=1)
    saga_id = data["saga_id"]
    retry = await client.post(f"/ui/sagas/{saga_id}/retry", json={})
    assert retry.status_code == 409
    assert "only FAILED sagas can be retried" in retry.json()["detail"]
    cancel = await client.post(f"/ui/sagas/{saga_id}/cancel", json={})
    assert cancel.status_code == 409
    assert cancel.json()["detail"]
    missing = await client.post("/ui/sagas/nope/retry", json={})
    assert missing.status_code == 404


async def test_actions_refuse_what_a_cross_site_form_can_send(client: httpx.AsyncClient) -> None:
    data = await place(client, user_id="user_1", product_id="product_1", quantity=1)
    form = {"content-type": "application/x-www-form-urlencoded"}
    for action in ("retry", "cancel"):
        response = await client.post(f"/ui/sagas/{data['saga_id']}/{action}", headers=form)
        assert response.status_code == 415
        assert "application/json" in response.json()["detail"]
