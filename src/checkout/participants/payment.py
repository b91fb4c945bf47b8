"""The payment participant: charges a customer's account and refunds it on compensation.

Money only moves between an account's balance and a captured payment, so
``sum(balances) + sum(captured payments)`` is constant: a refund moves the amount back and marks
the payment refunded in the same transaction.

The operations are synchronous functions over a Core ``Connection`` (the executor owns the
transaction, see :mod:`checkout.dbexec`); :class:`PaymentService` runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from checkout.db import AccountRow, PaymentRow
from checkout.dbexec import ShopExecutor
from checkout.domain.models import InsufficientFunds, Payment, PaymentStatus, UserNotFound
from checkout.participants._sql import (
    claim_once,
    execute,
    fetch_first,
    find_by_key,
    first_write,
    insert_ignore,
    load_by_key,
    table_of,
)

payments = table_of(PaymentRow)
accounts = table_of(AccountRow)

_DEBIT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"), accounts.c.balance_cents >= bindparam("amount"))
    .values(balance_cents=accounts.c.balance_cents - bindparam("amount"))
)
_CREDIT = (
    update(accounts)
    .where(accounts.c.id == bindparam("account"))
    .values(balance_cents=accounts.c.balance_cents + bindparam("amount"))
)
_ACCOUNT_EXISTS = select(accounts.c.id).where(accounts.c.id == bindparam("account"))
_MARK_REFUNDED = (
    update(payments)
    .where(
        payments.c.idempotency_key == bindparam("forward"),
        payments.c.status == PaymentStatus.CAPTURED.value,
    )
    .values(status=PaymentStatus.REFUNDED.value, compensation_key=bindparam("compensation"))
)
_FOR_ORDER = (
    select(payments)
    .where(payments.c.order_id == bindparam("order"))
    .order_by(payments.c.created_at)
)


def _payment(row: Any) -> Payment:
    return Payment(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        account_id=row.account_id,
        amount_cents=row.amount_cents,
        status=PaymentStatus(row.status),
        compensation_key=row.compensation_key,
    )


def charge(
    conn: Connection, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
) -> Payment:
    """Capture ``amount_cents`` from the account.

    Raises :class:`UserNotFound` or :class:`InsufficientFunds` (nothing charged, nothing
    recorded). A repeat returns the recorded payment; a ``void`` tombstone under the key
    (refunded before it ran) is returned as is, and no money moves.
    """
    if not chargeable(amount_cents):
        if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
            raise TypeError("amount_cents must be an int")
        raise ValueError("cannot charge a negative amount")
    recorded = charged_before(conn, idempotency_key, order_id, account_id, amount_cents)
    if recorded is None:
        return _made(idempotency_key, order_id, account_id, amount_cents)
    return recorded


def _made(idempotency_key: str, order_id: str, account_id: str, amount_cents: int) -> Payment:
    """The payment a call that charged now makes (what :func:`charged_before`'s None stands
    for)."""
    return Payment(
        idempotency_key=idempotency_key,
        order_id=order_id,
        account_id=account_id,
        amount_cents=amount_cents,
        status=PaymentStatus.CAPTURED,
    )


def chargeable(amount_cents: object) -> bool:
    """An amount :func:`charge` takes: an int (not a bool), not negative."""
    return (
        isinstance(amount_cents, int) and not isinstance(amount_cents, bool) and amount_cents >= 0
    )


def charged_before(
    conn: Connection, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
) -> Payment | None:
    """:func:`charge` of a :func:`chargeable` amount for a write whose caller knows what a
    payment made now is (the saga step's output): None when this call charged, else the
    payment recorded under the key (a repeat, or a tombstone). Same errors."""

    def debit(claim: str | None) -> None:
        if first_write(conn, _DEBIT, payments, claim, account=account_id, amount=amount_cents) != 1:
            exists = fetch_first(conn, _ACCOUNT_EXISTS, {"account": account_id})
            raise InsufficientFunds(account_id) if exists else UserNotFound(account_id)

    recorded = claim_once(
        conn,
        payments,
        {
            "idempotency_key": idempotency_key,
            "order_id": order_id,
            "account_id": account_id,
            "amount_cents": amount_cents,
            "status": PaymentStatus.CAPTURED.value,
        },
        debit,
    )
    return None if recorded is None else _payment(recorded)


def refund(
    conn: Connection,
    forward_key: str,
    idempotency_key: str,
    order_id: str | None = None,
    account_id: str | None = None,
) -> Payment:
    """Compensate the charge made under ``forward_key``, exactly once.

    * captured: the amount goes back to the account, status ``refunded``.
    * already refunded or void: nothing happens.
    * never charged: a ``void`` tombstone is recorded under ``forward_key`` so that a late
      charge with that key becomes a no-op instead of taking money for a dead order.
    """
    refunded(conn, forward_key, idempotency_key, order_id, account_id)
    return _payment(load_by_key(conn, payments, forward_key))


def refunded(
    conn: Connection,
    forward_key: str,
    idempotency_key: str,
    order_id: str | None = None,
    account_id: str | None = None,
) -> None:
    """:func:`refund` for a caller that needs no answer (a compensation's ``ctx.atomic()``
    write): the same writes, without reading the row back and building its model."""
    tombstoned = insert_ignore(
        conn,
        payments,
        {
            "idempotency_key": forward_key,
            "order_id": order_id,
            "account_id": account_id,
            "amount_cents": 0,
            "status": PaymentStatus.VOID.value,
            "compensation_key": idempotency_key,
        },
    )
    if not tombstoned and execute(
        conn, _MARK_REFUNDED, forward=forward_key, compensation=idempotency_key
    ):
        row = load_by_key(conn, payments, forward_key)
        if execute(conn, _CREDIT, account=row.account_id, amount=row.amount_cents) != 1:
            # The account vanished: roll back and let the saga's compensation retry, then
            # surface as FAILED for an operator. Never lose the money.
            raise RuntimeError(f"cannot refund: account {row.account_id!r} is gone")


def get_payment(conn: Connection, idempotency_key: str) -> Payment | None:
    row = find_by_key(conn, payments, idempotency_key)
    return None if row is None else _payment(row)


def payments_for_order(conn: Connection, order_id: str) -> list[Payment]:
    return [_payment(row) for row in conn.execute(_FOR_ORDER, {"order": order_id})]


class PaymentService:
    """Account charges, idempotent on the payment step's key."""

    def __init__(self, db: ShopExecutor) -> None:
        self._db = db

    async def charge(
        self, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
    ) -> Payment:
        """See :func:`charge`."""
        return await self._db.write(charge, idempotency_key, order_id, account_id, amount_cents)

    def charge_in_saga_log(
        self, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
    ) -> tuple[Callable[[Any], Payment | None], Payment] | None:
        """:func:`charge` as a ``ctx.atomic()`` write (:func:`charged_before`) and the payment
        it makes, or None where the shop's writes cannot ride the saga log's transactions (see
        :meth:`ShopExecutor.in_saga_log`), or for an amount ``charge`` refuses (its own error
        then)."""
        if not chargeable(amount_cents):
            return None
        write = self._db.in_saga_log(
            charged_before, idempotency_key, order_id, account_id, amount_cents
        )
        if write is None:
            return None
        return write, _made(idempotency_key, order_id, account_id, amount_cents)

    async def refund(
        self,
        forward_key: str,
        idempotency_key: str,
        order_id: str | None = None,
        account_id: str | None = None,
    ) -> Payment:
        """See :func:`refund`."""
        return await self._db.write(refund, forward_key, idempotency_key, order_id, account_id)

    def refund_in_saga_log(
        self,
        forward_key: str,
        idempotency_key: str,
        order_id: str | None = None,
        account_id: str | None = None,
    ) -> Callable[[Any], None] | None:
        """:func:`refund` as a ``ctx.atomic()`` write (:func:`refunded`), or None where the
        shop's writes cannot ride the saga log's transactions (see
        :meth:`ShopExecutor.in_saga_log`)."""
        return self._db.in_saga_log(refunded, forward_key, idempotency_key, order_id, account_id)

    async def get(self, idempotency_key: str) -> Payment | None:
        return await self._db.read(get_payment, idempotency_key)

    async def for_order(self, order_id: str) -> list[Payment]:
        """Every payment record of an order (normally one), for status pages."""
        return await self._db.read(payments_for_order, order_id)
