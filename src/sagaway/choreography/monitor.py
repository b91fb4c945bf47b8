"""The passive monitor: every event of a correlation, recorded as a saga in the saga log.

A choreography has no orchestrator, so nothing would otherwise know where one business
transaction stands. The monitor subscribes to every event on the bus and keeps, per correlation
id, a saga record (id = the correlation id, name = the choreography's) in the same saga store
the engine uses: the list/show API, the CLI and the UI timeline then show a choreographed saga
like an orchestrated one. It never sends anything: the services do not know it exists.

* each event becomes a step row (named after the event type) and a history entry saying which
  service emitted it; events declared ``compensating`` are recorded in the compensation phase;
* the status is derived from the events: the first one creates the saga RUNNING; a
  compensating event makes it COMPENSATING; an event in ``succeeded_on`` ends it SUCCEEDED, one
  in ``compensated_on`` COMPENSATED, one in ``failed_on`` FAILED;
* a redelivered event (same ``event.id``) is recorded once; an event arriving after the end (the
  bus does not order events of different services) is recorded without changing the status;
* ``sweep(now)``: a saga not ended by its deadline (``deadline_seconds`` after its first event)
  gets a ``deadline_expired`` history entry and an error saying so, once.

One monitor consumer per choreography (one process): records of one correlation are written
under a per-correlation lock of that process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sagaway.choreography.events import DomainEvent
from sagaway.errors import SagaNotFound
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.base import SagaStore


@dataclass(frozen=True)
class Choreography:
    """How the monitor reads one kind of business transaction's events."""

    name: str
    succeeded_on: frozenset[str]
    compensated_on: frozenset[str] = frozenset()
    failed_on: frozenset[str] = frozenset()
    compensating: frozenset[str] = frozenset()
    deadline_seconds: float | None = None
    version: int = 1

    @classmethod
    def define(
        cls,
        name: str,
        *,
        succeeded_on: Collection[str],
        compensated_on: Collection[str] = (),
        failed_on: Collection[str] = (),
        compensating: Collection[str] = (),
        deadline_seconds: float | None = None,
    ) -> Choreography:
        return cls(
            name,
            frozenset(succeeded_on),
            frozenset(compensated_on),
            frozenset(failed_on),
            frozenset(compensating),
            deadline_seconds,
        )

    def outcome(self, event_type: str) -> SagaStatus | None:
        if event_type in self.succeeded_on:
            return SagaStatus.SUCCEEDED
        if event_type in self.compensated_on:
            return SagaStatus.COMPENSATED
        if event_type in self.failed_on:
            return SagaStatus.FAILED
        if event_type in self.compensating:
            return SagaStatus.COMPENSATING
        return None

    def phase(self, event_type: str) -> Phase:
        undoing = self.compensating | self.compensated_on
        return Phase.COMPENSATION if event_type in undoing else Phase.FORWARD


def _ended(record: SagaRecord) -> bool:
    return record.status.is_terminal


_END_EVENT = {
    SagaStatus.SUCCEEDED: EventType.SAGA_SUCCEEDED,
    SagaStatus.COMPENSATED: EventType.SAGA_COMPENSATED,
    SagaStatus.FAILED: EventType.SAGA_FAILED,
    SagaStatus.COMPENSATING: EventType.COMPENSATION_STARTED,
}


@dataclass(eq=False)
class Monitor:
    """Records ``choreography``'s events into ``store`` (see the module docstring)."""

    store: SagaStore
    choreography: Choreography
    clock: Callable[[], float] = time.time
    recorded: int = 0
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)
    _waiters: dict[str, list[tuple[asyncio.Future[SagaRecord], Callable[[SagaRecord], bool]]]] = (
        field(default_factory=dict)
    )

    async def record(self, event: DomainEvent) -> None:
        """Record one delivery of ``event`` (idempotent on ``event.id``)."""
        key = event.correlation_id
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                await self._record(event)
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
        waiters = self._waiters.get(key)
        if waiters:
            record = await self.store.load(key)
            if record is not None:
                for future, until in list(waiters):
                    if not future.done() and until(record):
                        future.set_result(record)

    async def _record(self, event: DomainEvent) -> None:
        saga_id = event.correlation_id
        now = self.clock()
        record = await self.store.load(saga_id)
        if record is None:
            if await self._create(event, now):
                return
            record = await self.store.get(saga_id)
        if any(self._event_id(row) == event.id for row in record.steps.values()):
            return  # a redelivery: recorded already
        step = self._step(record, event)
        change = Change(steps=[step], events=[self._history(event, step)])
        target = self.choreography.outcome(event.type)
        if target is not None and record.status.is_active and target is not record.status:
            change.status = target
            change.error = self._reason(event) if target is not SagaStatus.SUCCEEDED else None
            change.events.append(Event(at=now, type=_END_EVENT[target], detail=change.error))
            change.release_lease = target.is_terminal
        await self.store.commit(saga_id, None, change, now)
        self.recorded += 1

    async def _create(self, event: DomainEvent, now: float) -> bool:
        chor = self.choreography
        step = self._step(None, event)
        status = SagaStatus.RUNNING
        events = [
            Event(at=event.at, type=EventType.SAGA_STARTED, detail=f"first event: {event.type}"),
            self._history(event, step),
        ]
        target = chor.outcome(event.type)
        error = None
        if target is not None:
            status = target
            error = self._reason(event) if target is not SagaStatus.SUCCEEDED else None
            events.append(Event(at=now, type=_END_EVENT[target], detail=error))
        deadline = None if chor.deadline_seconds is None else event.at + chor.deadline_seconds
        _, created = await self.store.create(
            NewSaga(
                id=event.correlation_id,
                name=chor.name,
                version=chor.version,
                input={"correlation_id": event.correlation_id, "first_event": event.to_json()},
                at=now,
                status=status,
                idempotency_key=f"choreography:{event.correlation_id}",
                deadline_at=deadline,
                steps=[step],
                events=events,
            )
        )
        if created:
            self.recorded += 1
            if error is not None:
                await self.store.commit(
                    event.correlation_id, None, Change(status=status, error=error), now
                )
        return created

    def _step(self, record: SagaRecord | None, event: DomainEvent) -> StepRecord:
        phase = self.choreography.phase(event.type)
        name = event.type
        if record is not None:
            n = 2
            while (name, phase) in record.steps:
                name = f"{event.type}#{n}"
                n += 1
        return StepRecord(
            name=name,
            phase=phase,
            status=StepStatus.COMPENSATED if phase is Phase.COMPENSATION else StepStatus.SUCCEEDED,
            attempts=1,
            output={
                "event_id": event.id,
                "source": event.source,
                "payload": event.payload,
                "causation_id": event.causation_id,
            },
            started_at=event.at,
            finished_at=event.at,
        )

    @staticmethod
    def _history(event: DomainEvent, step: StepRecord) -> Event:
        kind = (
            EventType.STEP_COMPENSATED
            if step.phase is Phase.COMPENSATION
            else EventType.STEP_SUCCEEDED
        )
        return Event(
            at=event.at,
            type=kind,
            step=step.name,
            phase=step.phase,
            attempt=1,
            detail=f"{event.type} emitted by {event.source}",
        )

    @staticmethod
    def _event_id(row: StepRecord) -> str | None:
        output = row.output
        return output.get("event_id") if isinstance(output, dict) else None

    @staticmethod
    def _reason(event: DomainEvent) -> str:
        payload = event.payload
        reason = payload.get("reason") if isinstance(payload, dict) else None
        return f"{event.type} from {event.source}" + (f": {reason}" if reason else "")

    # -- waiting and deadlines ------------------------------------------------------------------

    async def wait(
        self,
        correlation_id: str,
        timeout: float,
        until: Callable[[SagaRecord], bool] = _ended,
    ) -> SagaRecord | None:
        """The correlation's saga once ``until(record)`` holds (default: it has ended), as this
        process's monitor records its events; after ``timeout`` seconds, its current record
        (None when no event of it was recorded yet)."""
        future: asyncio.Future[SagaRecord] = asyncio.get_running_loop().create_future()
        entry = (future, until)
        self._waiters.setdefault(correlation_id, []).append(entry)
        try:
            record = await self.store.load(correlation_id)
            if record is not None and until(record):
                return record
            try:
                async with asyncio.timeout(timeout):
                    return await asyncio.shield(future)
            except TimeoutError:
                return await self.store.load(correlation_id)
        finally:
            waiters = self._waiters.get(correlation_id, [])
            if entry in waiters:
                waiters.remove(entry)
            if not waiters:
                self._waiters.pop(correlation_id, None)

    async def sweep(self, now: float | None = None) -> list[str]:
        """Flag sagas of this choreography past their deadline and not ended (once each);
        returns their ids."""
        now = self.clock() if now is None else now
        flagged: list[str] = []
        for status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING):
            offset = 0
            while True:
                page = await self.store.list_sagas(
                    status=status, name=self.choreography.name, limit=200, offset=offset
                )
                for saga in page.items:
                    if saga.deadline_at is None or saga.deadline_at > now or saga.error:
                        continue
                    why = "no ending event by its deadline: stuck in a service or a queue"
                    try:
                        await self.store.commit(
                            saga.id,
                            None,
                            Change(
                                status=saga.status,
                                error=why,
                                events=[Event(at=now, type=EventType.DEADLINE_EXPIRED, detail=why)],
                            ),
                            now,
                        )
                    except SagaNotFound:
                        continue
                    flagged.append(saga.id)
                offset += len(page.items)
                if len(page.items) < 200:
                    break
        return flagged
