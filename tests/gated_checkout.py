"""``checkout`` (``serve`` or ``worker``) with crash-test gates: participant calls that never
return.

The SIGKILL tests need sagas that are certainly unfinished, and certainly held by the process
they kill, not sagas that merely happened to be slow. This launcher holds chosen participant
calls *after* their effect was applied (the uncertain case: the engine never hears back) until
the process dies:

* ``PaymentService.charge`` of the accounts in ``CRASH_HOLD_CHARGE`` (comma-separated): the
  saga stays RUNNING with its payment step RUNNING, the money already taken;
* ``PaymentService.refund`` of the accounts in ``CRASH_HOLD_REFUND``: the saga stays
  COMPENSATING with its refund COMPENSATING, the money already given back.

Where the shop's tables live in the saga log's file, a charge (a refund) rides its step's
(compensation's) transition (``ctx.atomic()``): there is no moment between its effect and its
record to hold it in. The charges of ``CRASH_HOLD_CHARGE``'s accounts and the refunds of
``CRASH_HOLD_REFUND``'s take the separate write's path (their ``*_in_saga_log`` says None),
the others the transition's, so a kill meets both.

Each held call prints ``GATE charge|refund <account> <idempotency key>`` so the test knows,
without guessing at timing, that the state it wants to kill in has been reached. Step timeouts
are switched off so a held step cannot time out and move the saga on before the kill.

    python gated_checkout.py serve --host 127.0.0.1 --port 0
    python gated_checkout.py worker
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import checkout.sagas
from checkout.cli import main
from checkout.participants.payment import PaymentService

HOLD_CHARGE = set(filter(None, os.environ.get("CRASH_HOLD_CHARGE", "").split(",")))
HOLD_REFUND = set(filter(None, os.environ.get("CRASH_HOLD_REFUND", "").split(",")))
checkout.sagas.STEP_TIMEOUT = None  # type: ignore[assignment]  # read when the saga is built

real_charge, real_refund = PaymentService.charge, PaymentService.refund
real_charge_in_saga_log = PaymentService.charge_in_saga_log
real_refund_in_saga_log = PaymentService.refund_in_saga_log


async def hold(what: str, account: str, key: str) -> None:
    print(f"GATE {what} {account} {key}", flush=True)
    await asyncio.Event().wait()  # never set: held until the process is killed


async def charge(
    self: PaymentService, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
) -> Any:
    payment = await real_charge(self, idempotency_key, order_id, account_id, amount_cents)
    if account_id in HOLD_CHARGE:
        await hold("charge", account_id, idempotency_key)
    return payment


async def refund(
    self: PaymentService,
    forward_key: str,
    idempotency_key: str,
    order_id: str | None = None,
    account_id: str | None = None,
) -> Any:
    payment = await real_refund(self, forward_key, idempotency_key, order_id, account_id)
    if account_id in HOLD_REFUND:
        await hold("refund", account_id or "", idempotency_key)
    return payment


def charge_in_saga_log(
    self: PaymentService, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
) -> Any:
    if account_id in HOLD_CHARGE:
        return None  # a charge to hold: its own write (see the module docstring)
    return real_charge_in_saga_log(self, idempotency_key, order_id, account_id, amount_cents)


def refund_in_saga_log(
    self: PaymentService,
    forward_key: str,
    idempotency_key: str,
    order_id: str | None = None,
    account_id: str | None = None,
) -> Any:
    if account_id in HOLD_REFUND:
        return None  # a refund to hold: its own write (see the module docstring)
    return real_refund_in_saga_log(self, forward_key, idempotency_key, order_id, account_id)


PaymentService.charge = charge  # type: ignore[method-assign]
PaymentService.charge_in_saga_log = charge_in_saga_log  # type: ignore[method-assign]
PaymentService.refund = refund  # type: ignore[method-assign]
PaymentService.refund_in_saga_log = refund_in_saga_log  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
