"""The inbox page over a real engine whose saga waits for a signal: the row, what it waits
for, the signal button's form, and that posting what the form posts resumes the saga."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from sagaway import SagaStatus
from sagaway.web import saga_ui_router
from waitkit import ORDER, Waits


async def test_inbox_shows_a_waiting_saga_and_its_signal_button_resumes_it() -> None:
    kit = Waits("memory://")
    async with kit.engine() as engine:
        saga_id = await engine.start(kit.checkout, ORDER)
        await kit.parked()
        app = FastAPI()
        app.include_router(saga_ui_router(engine))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as client:
            page = (await client.get("/ui/inbox?waiting=signal:")).text
            assert f'data-saga-id="{saga_id}"' in page
            assert 'data-waiting-for="signal:payment_confirmed"' in page
            assert "signal payment_confirmed" in page
            action = re.search(r'<form method="post" action="([^"]+)"', page)
            assert action is not None
            assert action.group(1) == f"/ui/sagas/{saga_id}/signals/payment_confirmed"
            assert 'data-testid="signal-saga"' in page
            # The page's script posts JSON to the form's action (here with the payload the
            # wait's reply type asks for).
            payload = {"payment_id": "p-1", "by": "operator"}
            accepted = await client.post(action.group(1), json={"payload": payload})
            assert accepted.status_code == 202, accepted.text
            record = await engine.wait(saga_id, timeout=5)
            assert record.status is SagaStatus.SUCCEEDED
            after = (await client.get("/ui/inbox")).text
            assert f'data-saga-id="{saga_id}"' not in after
            assert "No saga is waiting." in after
