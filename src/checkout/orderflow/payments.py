"""How the gateway's order flow reaches the payment and delivery services.

``LocalPayments``: embedded (``make run``), their choreography services run in this process on
the shop database. ``RemotePayments``: separate services, the payment service's and the
shipping service's HTTP APIs (``checkout.orderflow.parts``); a refusal keeps its status and
message (404, 409, 422), a service that cannot be reached is a ``FlowUnavailable`` (503: the
customer may try again; confirming and cancelling are idempotent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from checkout.orderflow import services as svc
from sagaway.choreography import EventService

log = logging.getLogger("checkout.orderflow")


class FlowUnavailable(svc.FlowError):
    status = 503


class Payments(Protocol):
    async def confirm(self, payment_id: str) -> dict[str, Any]: ...

    async def cancel(self, payment_id: str, reason: str) -> dict[str, Any]: ...

    async def get(self, payment_id: str) -> dict[str, Any] | None: ...

    async def record_pending(self, payment: dict[str, Any]) -> dict[str, Any]: ...

    async def couriers(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class LocalPayments:
    """The payment service of this process (embedded)."""

    def __init__(self, payment: EventService, timeout_seconds: float) -> None:
        self.payment = payment
        self.timeout_seconds = timeout_seconds

    async def confirm(self, payment_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.payment.transaction(svc.confirm_payment, payment_id)
        return result

    async def cancel(self, payment_id: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.payment.transaction(
            svc.cancel_payment, payment_id, reason
        )
        return result

    async def get(self, payment_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.payment.run(svc.read_payment, payment_id)
        return found

    async def record_pending(self, payment: dict[str, Any]) -> dict[str, Any]:
        await self.payment.transaction(
            svc.insert_payment, payment, self.timeout_seconds, "orchestration"
        )
        found = await self.get(payment["payment_id"])
        assert found is not None
        return found

    async def couriers(self) -> list[dict[str, Any]]:
        return svc.couriers()

    async def close(self) -> None:
        return None


class RemotePayments:
    """The payment and shipping services' pay-later routes, over HTTP."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        admin_token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.payment_url = urls["payment"].rstrip("/")
        self.shipping_url = urls["shipping"].rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=2.0)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _call(self, method: str, url: str, body: Any = None) -> Any:
        try:
            async with self._client().request(method, url, json=body) as response:
                if response.status < 300:
                    return await response.json()
                try:
                    detail = str((await response.json()).get("detail"))
                except (ValueError, aiohttp.ContentTypeError, AttributeError):
                    detail = (await response.text())[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("%s %s: %r", method, url, exc)
            raise FlowUnavailable(f"the payment service is unavailable: {exc!r}") from None
        error = {404: svc.FlowNotFound, 409: svc.FlowConflict, 422: svc.FlowInvalid}.get(
            response.status, FlowUnavailable
        )
        raise error(detail)

    async def confirm(self, payment_id: str) -> dict[str, Any]:
        body = {"payment_id": payment_id}
        result: dict[str, Any] = await self._call(
            "POST", f"{self.payment_url}/payments/confirm", body
        )
        return result

    async def cancel(self, payment_id: str, reason: str) -> dict[str, Any]:
        body = {"payment_id": payment_id, "reason": reason}
        result: dict[str, Any] = await self._call(
            "POST", f"{self.payment_url}/payments/cancel", body
        )
        return result

    async def get(self, payment_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                "GET", f"{self.payment_url}/payments/{quote(payment_id, safe='')}"
            )
        except svc.FlowNotFound:
            return None
        return found

    async def record_pending(self, payment: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "POST", f"{self.payment_url}/pay-later/payments", payment
        )
        return result

    async def couriers(self) -> list[dict[str, Any]]:
        data = await self._call("GET", f"{self.shipping_url}/couriers")
        listed: list[dict[str, Any]] = data["couriers"]
        return listed
