"""Taking sagas over: lease renewal, recovery passes, and the engine's maintenance loop.

Every engine sharing a store renews the leases of the sagas it drives and, in each recovery
pass, claims the active sagas whose owner stopped renewing theirs (a crashed or stopped
process), plus its own orphans (runs stopped by an error, resumed from the log). A saga of a
definition this engine does not know is left for an engine that does, with a warning.

``Recovery`` is a collaborator the ``Engine`` owns: it spawns the runs it claims through the
engine, which keeps the table of runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from sagaway.definition import Saga
from sagaway.errors import SagaNotFound, UnknownSagaError
from sagaway.state import ACTIVE_STATUSES, Event, EventType

if TYPE_CHECKING:
    from sagaway.engine import Engine

log = logging.getLogger("sagaway.engine")

# How often an engine looks again for unfinished sagas of definitions it does not know.
UNKNOWN_CHECK_SECONDS = 60.0


class Recovery:
    """Claims orphaned sagas for one engine and keeps its leases alive."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.orphans: set[str] = set()  # runs stopped by an error: resumed from the log
        self._warned_unknown: set[tuple[str, int]] = set()
        self._next_unknown_check = 0.0
        self._wake = asyncio.Event()

    async def resume(self, saga_id: str) -> bool:
        """Take over one active saga if nobody holds a live lease on it; True if taken."""
        if saga_id in self.engine._runs:
            return True
        # Bug fix: check the definition *before* taking the lease. Acquiring first left a saga
        # of an unknown (name, version) leased to this engine, which renewed that lease forever
        # without running it, so no engine that knows the definition could ever claim it.
        existing = await self.engine.store.load(saga_id, history=False)
        if existing is None:
            raise SagaNotFound(saga_id)
        self.engine.definition(existing.name, existing.version)
        now = self.engine.clock.now()
        record = await self.engine.store.acquire(
            saga_id,
            self.engine.owner_id,
            now=now,
            lease_seconds=self.engine.lease_seconds,
            statuses=ACTIVE_STATUSES,
            event=Event(at=now, type=EventType.SAGA_CLAIMED, detail=self.engine.owner_id),
        )
        if record is None:
            return False
        if saga_id in self.engine._runs:  # taken by a run here meanwhile (same owner: allowed)
            return True
        self.engine._spawn(self.engine.definition(record.name, record.version), record)
        return True

    async def recover(self, *, include_own: bool = False) -> int:
        """One recovery pass: claim sagas whose lease expired and resume them. Returns how many
        were taken. Sagas of definitions this engine does not know are left for one that does."""
        for saga_id in list(self.orphans):
            self.orphans.discard(saga_id)
            with contextlib.suppress(SagaNotFound, UnknownSagaError):
                await self.engine.resume(saga_id)
        known = self.engine.known_sagas()
        now = self.engine.clock.now()
        if include_own or now >= self._next_unknown_check:
            self._next_unknown_check = now + UNKNOWN_CHECK_SECONDS
            await self._warn_unknown(known, now)
        room = self.engine.max_concurrency - len(self.engine._runs)
        if room <= 0 or not known:
            return 0
        claimed = await self.engine.store.claim(
            self.engine.owner_id,
            now=now,
            lease_seconds=self.engine.lease_seconds,
            definitions=list(known),
            limit=room,
            include_own=include_own,
        )
        taken = 0
        for record in claimed:
            if record.id not in self.engine._runs:
                self.engine._spawn(known[(record.name, record.version)], record)
                taken += 1
        return taken

    async def _warn_unknown(self, known: dict[tuple[str, int], Saga], now: float) -> None:
        """Say which unfinished sagas nobody drives because this engine does not know their
        definition (once per definition): without it they would wait silently forever."""
        try:
            # Definitions already warned about are skipped like known ones: counting their
            # sagas again each minute would only be thrown away.
            stranded = await self.engine.store.stranded(
                now=now, owner=self.engine.owner_id, known={*known, *self._warned_unknown}
            )
        except Exception:  # a diagnostic must not stop recovery
            log.exception("could not look for sagas of unknown definitions")
            return
        for (name, version), count in sorted(stranded.items()):
            if (name, version) in self._warned_unknown:
                continue
            self._warned_unknown.add((name, version))
            log.warning(
                "%d unfinished saga(s) of %r version %d wait for an engine that knows their "
                "definition; this one does not (it knows %s). Import or declare "
                "Saga(%r, version=%d) in this process (or add it to Engine(sagas=[...])) and "
                "restart it to resume them.",
                count,
                name,
                version,
                ", ".join(f"{n} v{v}" for n, v in sorted(known)) or "none",
                name,
                version,
            )

    def wake(self) -> None:
        """Run the next recovery pass now (a store notification says there is work)."""
        self._wake.set()

    async def maintain(self) -> None:
        """The engine's background loop: renew its leases, claim orphaned sagas, sweep the
        outbox; every ``recovery_interval`` (at most a third of a lease), or when woken."""
        interval = min(self.engine.recovery_interval, self.engine.lease_seconds / 3)
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a close() whose cancel lands just
            # after a wake-up is swallowed by wait_for, and close() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._renew()
                await self.engine.recover()
                await self.engine.relay_outbox()
                if self.engine._retention is not None:  # prune old finished sagas
                    await self.engine._retention.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recovery pass failed; retrying in %.1f s", interval)

    async def _renew(self) -> None:
        if not self.engine._runs:
            return
        cancelled = await self.engine.store.renew_leases(
            self.engine.owner_id,
            now=self.engine.clock.now(),
            lease_seconds=self.engine.lease_seconds,
        )
        for saga_id in cancelled:
            run = self.engine._runs.get(saga_id)
            if run is not None:
                run.cancel_requested = True
