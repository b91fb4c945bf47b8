"""``HEAD`` on every ``GET`` route, as HTTP says (RFC 9110 9.3.2): the same status and headers,
no body.

FastAPI routes answer only the methods they declare, so ``HEAD /`` (what uptime checks and
``curl -I`` send) was a 405. Declaring HEAD on each route would also put a HEAD operation per
route in the OpenAPI document; instead this middleware runs a HEAD request as GET and drops
the body: the response ends right after its headers, and the app is then told the client went
away, so a streaming response (Server-Sent Events) stops instead of producing a body nobody
reads.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = False

        async def send_headers_only(message: Message) -> None:
            nonlocal done
            if done:
                return  # the body, or more of it
            await send(message)
            if message["type"] == "http.response.start":
                done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def receive_until_done() -> Message:
            if done:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, receive_until_done, send_headers_only)
