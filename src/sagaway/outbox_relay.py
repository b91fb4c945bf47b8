"""The outbox relay: how commands a saga committed to its outbox reach the participants.

A remote step writes its command into the saga log's outbox in the same atomic write as the
transition that parks the saga (see ``Change.outbox``). Nothing is published before that write
is durable, so a crash can never send a command the log does not know about. Two paths then
publish it:

- the fast path: the run that committed the messages hands them to ``OutboxRelay.relay`` right
  after its commit; their deletion from the outbox follows in the background, batched;
- the sweep: every recovery pass publishes what the outbox still holds (written before a crash,
  or whose publish or deletion failed), oldest first, then deletes it.

A message can therefore be published twice (the fast path's deletion lost, then the sweep);
the participant's inbox dedupes on the message id, so the effect happens once.
"""

from __future__ import annotations

import asyncio
import logging

from sagaway.clock import Clock
from sagaway.state import OutboxMessage
from sagaway.store import SagaStore
from sagaway.store.base import OutboxStore
from sagaway.transport.base import Dispatcher

log = logging.getLogger("sagaway.engine")

# The relay's sweep publishes outbox messages older than this: younger ones are still being
# published by the run that wrote them (the fast path, right after its commit).
OUTBOX_SWEEP_AGE = 2.0
OUTBOX_SWEEP_BATCH = 500


class OutboxRelay:
    """Publishes an engine's outbox messages through its transport and deletes them once sent.

    The engine owns one; its runs call ``relay`` after each commit that carries messages."""

    def __init__(self, store: SagaStore, transport: Dispatcher, clock: Clock) -> None:
        self.store = store
        self.transport = transport
        self.clock = clock
        self._published: list[str] = []  # outbox ids published, to delete (batched)
        self._deleting: asyncio.Task[None] | None = None

    async def relay(self, messages: tuple[OutboxMessage, ...]) -> None:
        """Publish outbox messages just committed; their deletion follows in the background,
        batched. A failure leaves them for the sweep (``sweep``), which runs in every
        recovery pass."""
        try:
            await self.transport.publish(messages)
        except Exception as exc:  # the saga is parked all the same: the sweep sends them
            log.warning(
                "relay: %d message(s) not published (%s); the sweep retries", len(messages), exc
            )
            return
        self._published.extend(m.id for m in messages)
        if self._deleting is None or self._deleting.done():
            self._deleting = asyncio.get_running_loop().create_task(self._delete_published())

    async def _delete_published(self) -> None:
        """Delete what the relay published: one write for all the messages published while the
        previous one was in flight (one per message would cost a write per remote step). A
        message whose deletion is lost (a crash, an error) is published again by the sweep:
        harmless, as its receiver dedupes on its id."""
        store = self.store
        while self._published and isinstance(store, OutboxStore):
            ids, self._published = self._published, []
            try:
                await store.outbox_delete(ids)
            except Exception as exc:
                log.warning("relay: could not delete %d published message(s): %s", len(ids), exc)
                return

    async def flush(self) -> None:
        """Wait until the messages the relay has published are deleted from the outbox."""
        while self._deleting is not None and not self._deleting.done():
            await asyncio.shield(self._deleting)

    async def sweep(self, *, older_than: float | None = None) -> int:
        """Publish what the outbox still holds, oldest first, and delete it; return how many
        were sent. ``older_than`` defaults to a few seconds ago, leaving the runs' own fast
        path alone."""
        store = self.store
        if not isinstance(store, OutboxStore):
            return 0
        if older_than is None:
            older_than = self.clock.now() - OUTBOX_SWEEP_AGE
        sent = 0
        while True:
            batch = await store.outbox_pending(limit=OUTBOX_SWEEP_BATCH, older_than=older_than)
            if not batch:
                return sent
            await self.transport.publish(batch)
            await store.outbox_delete([m.id for m in batch])
            sent += len(batch)
            if len(batch) < OUTBOX_SWEEP_BATCH:
                return sent
