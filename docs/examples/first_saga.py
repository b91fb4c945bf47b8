"""A checkout saga on a SQLite saga log: kill it at any instant, run it again, it finishes."""

import asyncio

from pydantic import BaseModel

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed


class Order(BaseModel):
    order_id: str
    items: list[str]
    amount_cents: int


class Reservation(BaseModel):
    reservation_id: str
    items: list[str]


class Payment(BaseModel):
    payment_id: str
    amount_cents: int


checkout = Saga("checkout", version=1)  # declared: every Engine of this process resumes it


@checkout.step(retry=RetryPolicy(max_attempts=3), timeout=5.0)
async def reserve_inventory(ctx: StepContext, order: Order) -> Reservation:
    print(f"reserving {order.items} with key {ctx.idempotency_key}", flush=True)
    await asyncio.sleep(2)  # stands for the warehouse's API, which dedupes on the key
    return Reservation(reservation_id=f"res-{order.order_id}", items=order.items)


@reserve_inventory.compensation
async def release_inventory(
    ctx: StepContext, order: Order, reservation: Reservation | None
) -> None:
    print(f"releasing {order.items} (forward key {ctx.forward_key})", flush=True)


@checkout.step
async def process_payment(ctx: StepContext, order: Order) -> Payment:
    if order.amount_cents > 100_00:
        raise StepFailed("Insufficient funds")  # business failure: no retry, compensate
    return Payment(payment_id=f"pay-{order.order_id}", amount_cents=order.amount_cents)


async def main() -> None:
    async with Engine("sqlite:///sagas.db", owner_id="worker-1") as engine:
        order = Order(order_id="42", items=["book"], amount_cents=25_00)
        # The same key after a restart: the saga already recorded, not a second one.
        saga_id = await engine.start(checkout, order, idempotency_key="order-42")
        outcome = await engine.wait(saga_id, timeout=30)  # a SagaRecord
        print(f"saga {saga_id}: {outcome.status} {outcome.error or ''}")
        if outcome.status is SagaStatus.SUCCEEDED:
            reservation: Reservation = outcome.output("reserve_inventory")  # typed, not JSON
            payment: Payment = outcome.output("process_payment")
            print(f"reserved {reservation.reservation_id}, paid {payment.payment_id}")


if __name__ == "__main__":
    asyncio.run(main())
