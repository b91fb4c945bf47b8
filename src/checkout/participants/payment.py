"""The payment participant: charges a customer's account and refunds it on compensation.

Money only moves between an account's balance and a captured payment, so
``sum(balances) + sum(captured payments)`` is constant: a refund moves the amount back and marks
the payment refunded in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import select, update

from checkout.db import AccountRow, PaymentRow
from checkout.domain.models import InsufficientFunds, Payment, PaymentStatus, UserNotFound
from checkout.participants._sql import Sessions, execute_update, insert_ignore, load_by_key


def _payment(row: PaymentRow) -> Payment:
    return Payment(
        idempotency_key=row.idempotency_key,
        order_id=row.order_id,
        account_id=row.account_id,
        amount_cents=row.amount_cents,
        status=PaymentStatus(row.status),
        compensation_key=row.compensation_key,
    )


class PaymentService:
    """Account charges, idempotent on the payment step's key."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    async def charge(
        self, idempotency_key: str, order_id: str, account_id: str, amount_cents: int
    ) -> Payment:
        """Capture ``amount_cents`` from the account.

        Raises :class:`UserNotFound` or :class:`InsufficientFunds` (nothing charged, nothing
        recorded). A repeat returns the recorded payment; a ``void`` tombstone under the key
        (refunded before it ran) is returned as is, and no money moves.
        """
        if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
            raise TypeError("amount_cents must be an int")
        if amount_cents < 0:
            raise ValueError("cannot charge a negative amount")
        async with self._sessions.begin() as session:
            claimed = await insert_ignore(
                session,
                PaymentRow,
                {
                    "idempotency_key": idempotency_key,
                    "order_id": order_id,
                    "account_id": account_id,
                    "amount_cents": amount_cents,
                    "status": PaymentStatus.CAPTURED.value,
                },
            )
            if not claimed:
                return _payment(await load_by_key(session, PaymentRow, idempotency_key))
            debited = await execute_update(
                session,
                update(AccountRow)
                .where(AccountRow.id == account_id, AccountRow.balance_cents >= amount_cents)
                .values(balance_cents=AccountRow.balance_cents - amount_cents),
            )
            if debited != 1:
                exists = await session.scalar(
                    select(AccountRow.id).where(AccountRow.id == account_id)
                )
                raise InsufficientFunds(account_id) if exists else UserNotFound(account_id)
            return Payment(
                idempotency_key=idempotency_key,
                order_id=order_id,
                account_id=account_id,
                amount_cents=amount_cents,
                status=PaymentStatus.CAPTURED,
            )

    async def refund(
        self,
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
        async with self._sessions.begin() as session:
            tombstoned = await insert_ignore(
                session,
                PaymentRow,
                {
                    "idempotency_key": forward_key,
                    "order_id": order_id,
                    "account_id": account_id,
                    "amount_cents": 0,
                    "status": PaymentStatus.VOID.value,
                    "compensation_key": idempotency_key,
                },
            )
            if not tombstoned:
                refunded = await execute_update(
                    session,
                    update(PaymentRow)
                    .where(
                        PaymentRow.idempotency_key == forward_key,
                        PaymentRow.status == PaymentStatus.CAPTURED.value,
                    )
                    .values(status=PaymentStatus.REFUNDED.value, compensation_key=idempotency_key),
                )
                if refunded:
                    row = await load_by_key(session, PaymentRow, forward_key)
                    credited = await execute_update(
                        session,
                        update(AccountRow)
                        .where(AccountRow.id == row.account_id)
                        .values(balance_cents=AccountRow.balance_cents + row.amount_cents),
                    )
                    if credited != 1:
                        # The account vanished: roll back and let the saga's compensation
                        # retry, then surface as FAILED for an operator. Never lose the money.
                        raise RuntimeError(f"cannot refund: account {row.account_id!r} is gone")
            return _payment(await load_by_key(session, PaymentRow, forward_key))

    async def get(self, idempotency_key: str) -> Payment | None:
        async with self._sessions.begin() as session:
            row = await session.get(PaymentRow, idempotency_key)
            return None if row is None else _payment(row)

    async def for_order(self, order_id: str) -> list[Payment]:
        """Every payment record of an order (normally one), for status pages."""
        async with self._sessions.begin() as session:
            rows = await session.scalars(
                select(PaymentRow)
                .where(PaymentRow.order_id == order_id)
                .order_by(PaymentRow.created_at)
            )
            return [_payment(row) for row in rows]
