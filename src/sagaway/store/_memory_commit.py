"""The memory store's writes (``MemoryStore.commit`` and ``create``), on their own so that they are
compiled (DEVELOPERS.md "The compiled build"): it runs for every transition of every saga, and
the store's class, subclassed by tests and of several bases, stays interpreted.
"""

from __future__ import annotations

from sagaway.errors import CancelPending, EffectFailed, LeaseLost, SagaNotFound, TakeConflict
from sagaway.state import Change, NewSaga, OutboxMessage, SagaRecord, apply_change, record_from_new
from sagaway.store._codec import check_change, check_new


def create_saga(
    sagas: dict[str, SagaRecord], keys: dict[str, str], new: NewSaga
) -> tuple[str, bool]:
    """Record ``new`` in ``sagas`` (its key in ``keys``): ``(id, True)``; or, its idempotency
    key used already, ``(that saga's id, False)`` having changed nothing."""
    check_new(new)  # what another store could not keep, this one refuses too
    if new.idempotency_key is not None:
        existing = keys.get(new.idempotency_key)
        if existing is not None:
            return existing, False
        keys[new.idempotency_key] = new.id
    sagas[new.id] = record_from_new(new)
    return new.id, True


def commit_change(
    sagas: dict[str, SagaRecord],
    outbox: dict[str, OutboxMessage],
    saga_id: str,
    owner: str | None,
    change: Change,
    at: float,
) -> None:
    """Apply ``change`` to the saga's record in ``sagas`` and its messages to ``outbox``, or
    raise (SagaNotFound, LeaseLost, TakeConflict, CancelPending, EffectFailed) having changed
    nothing."""
    if not change.checked or change.outbox or change.park is not None:
        check_change(change)  # (what it checks of a runner's checked change is only these)
    take = change.take
    record = sagas.get(saga_id)
    if record is None:
        raise SagaNotFound(saga_id)
    if take is None and owner is not None and record.owner != owner:
        raise LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
    if take is not None and (
        record.fence != take.fence
        or (
            record.owner not in (None, owner)
            and record.lease_expires_at is not None
            and record.lease_expires_at >= at
        )
    ):
        raise TakeConflict(f"saga {saga_id} was written since it was read")
    if change.unless_cancelled and record.cancel_requested:
        raise CancelPending(f"saga {saga_id}: a cancel is pending")
    for write in change.effects:
        try:
            write(None)
        except Exception as exc:
            raise EffectFailed(f"a ctx.atomic() write failed: {exc}") from exc
    if take is not None:  # before apply_change: a park or a release hands it back
        record.owner, record.lease_expires_at = owner, take.until
    record.fence += 1
    # The engine never mutates a StepRecord it has committed, so keeping references is safe.
    apply_change(record, change, at)
    for message in change.outbox:
        outbox[message.id] = message
