"""Parked sagas driven on by what arrives from outside: participants' replies and signals.

A saga waiting for a remote reply or for a signal holds no task, no memory and no lease: its
row says what it waits for and until when (``SagaRecord.waiting_for``). When the reply or the
signal comes, any engine reads the saga (``TakingStore.peek``: no write), applies the rule
(``rules.reply_arrived`` / ``rules.signal_arrived``) and drives it on: the outcome, the lease
(``Change.take``, fenced on the row as read) and the run's first transition go in one durable
write. Of two engines racing on one read, one wins; the other gets ``TakeConflict``, nothing
written, and reads the saga again (a signal id already applied is then a duplicate). On a
store without that tier, the saga is taken first (``acquire``: its row comes back with the
lease), a second write.

``ParkedSagas`` is a collaborator the ``Engine`` owns: it shares the engine's table of runs
(a saga driven here is never taken twice) and spawns runs through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from sagaway import rules
from sagaway.decisions import Decision, Next, Signal
from sagaway.definition import Saga
from sagaway.errors import EngineNotOpen, InvalidInput, NotWaiting, SagaNotFound, TakeConflict
from sagaway.hooks import ClaimReason, StepOutcome
from sagaway.remote_steps import report_parked_attempt
from sagaway.state import (
    ACTIVE_STATUSES,
    Change,
    EventType,
    Park,
    Phase,
    SagaRecord,
    StepStatus,
    Take,
    apply_change,
)
from sagaway.store._codec import check_text, check_value
from sagaway.store.base import Page, TakingStore
from sagaway.transport.base import Reply

if TYPE_CHECKING:
    from sagaway.engine import Engine

log = logging.getLogger("sagaway.engine")
_TAKE_ATTEMPTS = 3  # reads of a parked saga a reply's take may lose before it is dropped


@dataclasses.dataclass(frozen=True, slots=True)
class SignalReceipt:
    """What ``Engine.signal`` did: ``duplicate`` when that signal id was already recorded
    (nothing changed)."""

    saga_id: str
    name: str
    signal_id: str
    duplicate: bool = False


class ParkedSagas:
    """Applies replies and signals to the sagas parked on them, for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The sagas a reply or a signal is being applied to here, from taking the saga until
        # it is handed to a run (or back to the log). Taking is per owner, so without this a
        # second reply (a stale duplicate) took the saga too, and gave the lease back under
        # the first one's run: LeaseLost, that reply lost until the park timed out.
        self._applying: dict[str, asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, saga_id: str) -> AsyncIterator[None]:
        """Apply one reply or signal at a time to ``saga_id`` in this engine."""
        while (other := self._applying.get(saga_id)) is not None:
            await asyncio.shield(other)  # shielded: our cancel must not end theirs
        mine = asyncio.get_running_loop().create_future()
        self._applying[saga_id] = mine
        try:
            yield
        finally:
            del self._applying[saga_id]
            mine.set_result(None)

    async def _take(self, saga_id: str, now: float) -> tuple[SagaRecord | None, Take | None]:
        """The saga to apply a reply or a signal to, and how to take it. A parked saga on a
        ``TakingStore`` is only read: the write that applies what woke it takes the lease
        (the ``Take``). Otherwise (or one not parked: a reply kicking an orphan) it is taken
        now with ``acquire``, its row coming back with the lease. None when unknown,
        finished, or held by another engine."""
        engine, store = self.engine, self.engine.store
        if isinstance(store, TakingStore):
            record = await store.peek(saga_id)
            if record is None or not record.status.is_active:
                return None, None
            if record.waiting_for is not None:
                held = (
                    record.owner not in (None, engine.owner_id)
                    and record.lease_expires_at is not None
                    and record.lease_expires_at >= now
                )
                if held:
                    return None, None
                return record, Take(record.fence, now + engine.lease_seconds)
        try:
            taken = await store.acquire(
                saga_id,
                engine.owner_id,
                now=now,
                lease_seconds=engine.lease_seconds,
                statuses=ACTIVE_STATUSES,
            )
        except SagaNotFound:
            return None, None
        return taken, None

    async def _release(self, saga_id: str, now: float, take: Take | None) -> None:
        """Give back a saga taken for nothing (a stale reply, a signal it does not wait for):
        nothing to do if it was only read."""
        if take is not None:
            return
        await self.engine.store.commit(
            saga_id, self.engine.owner_id, Change(release_lease=True), now
        )

    async def apply_reply(self, reply: Reply) -> None:
        """The transport's reply callback (``Dispatcher.on_reply``)."""
        await self.deliver(reply)

    async def deliver(self, reply: Reply) -> bool:
        """Apply a participant's reply to the saga waiting for it and drive the saga on; True
        if applied. A reply the saga no longer waits for (a duplicate, a late one, one for a
        saga another engine has moved on) is ignored. Message transports call this (through
        ``on_reply``); tests and other transports may call it directly."""
        async with self._one_at_a_time(reply.saga_id):
            return await self._deliver(reply)

    async def _deliver(self, reply: Reply) -> bool:
        saga_id = reply.saga_id
        if saga_id in self.engine._runs:
            # Still being driven here: it has sent the command and is about to park (or the
            # reply is stale). Look again once that run has ended.
            future: asyncio.Future[SagaRecord | str | None] = (
                asyncio.get_running_loop().create_future()
            )
            self.engine._waiters.setdefault(saga_id, []).append(future)
            with contextlib.suppress(TimeoutError):  # not wait_for: see Recovery.maintain
                async with asyncio.timeout(self.engine.lease_seconds):
                    await future
        # A take that lost to a write made since its read (another engine's take, a cancel
        # recorded) reads again: taken elsewhere, the saga is then held (that engine drives it
        # and re-sends); else this reply still applies, and dropping it would leave the saga
        # parked until its timeout.
        for _ in range(_TAKE_ATTEMPTS):
            applied = await self._deliver_once(reply)
            if applied is not None:
                return applied
        return False

    async def _deliver_once(self, reply: Reply) -> bool | None:
        """``_deliver`` on one read of the saga; None when its take lost (read again)."""
        saga_id = reply.saga_id
        # A reply is stale only after a duplicate delivery or a timeout, so a saga taken with
        # acquire (no TakingStore) rarely has its lease given back.
        now = self.engine.clock.now()
        taken, take = await self._take(saga_id, now)
        if taken is None:  # finished, unknown, or driven by another engine (it re-sends)
            log.debug("reply %s for saga %s: not waiting here", reply.message_id, saga_id)
            return False
        if saga_id in self.engine._runs:  # our own recovery took it meanwhile: it re-sends
            return False
        saga = self.engine._lookup(taken.name, taken.version)
        if saga is None:
            log.warning(
                "reply for saga %s of unknown definition %r v%d: ignored",
                saga_id,
                taken.name,
                taken.version,
            )
            await self._release(saga_id, now, take)
            return False
        taken.definition = saga
        reply = self._checked_reply(saga, reply)
        decision = rules.reply_arrived(saga, taken, reply, now)
        if decision.next is Next.IGNORE:
            log.debug("stale reply %s for saga %s: ignored", reply.message_id, saga_id)
            if taken.waiting_for is not None:
                await self._release(saga_id, now, take)
            else:  # not parked and now ours (acquired): it needs driving anyway
                self.engine._spawn(saga, taken)
            return False
        # Return (so the transport acknowledges the reply) once its outcome is durable.
        try:
            await self._resume_with(saga, taken, decision, "reply", now, reply, take)
        except TakeConflict:
            log.debug("reply %s for saga %s: written since read", reply.message_id, saga_id)
            return None
        return True

    def _attempt_ended(
        self, saga: Saga, taken: SagaRecord, reply: Reply, decision: Decision, now: float
    ) -> None:
        """Tell the step hooks about the remote attempt this reply ends."""
        if reply.ok:
            outcome, error = StepOutcome.SUCCEEDED, None
        else:
            again = decision.next in (Next.RETRY, Next.RESEND)
            outcome = StepOutcome.RETRYING if again else StepOutcome.FAILED
            error = reply.error
        report_parked_attempt(
            self.engine._hooks,
            saga,
            taken,
            reply.step,
            reply.phase,
            reply.attempt,
            outcome,
            error,
            now,
        )

    async def _resume_with(
        self,
        saga: Saga,
        taken: SagaRecord,
        decision: Decision,
        what: str,
        now: float,
        reply: Reply | None = None,
        take: Take | None = None,
    ) -> None:
        """Drive on a parked saga this engine took (or, with ``take``, takes with the first
        write) because ``what`` (a reply, a signal) arrived, by ``decision``; return once its
        outcome is durable. The run writes that outcome with its first transition (the next
        step's start): one write. ``TakeConflict`` if the take lost: nothing written."""
        if take is not None:
            decision.change.take = take
            taken.owner, taken.lease_expires_at = self.engine.owner_id, take.until
        hooks = self.engine._hooks
        if hooks is not None:
            hooks.on_resume(taken, taken.waiting_for or what)
            if reply is not None:
                self._attempt_ended(saga, taken, reply, decision, now)
        if decision.next is Next.STOP:
            # Driven by this engine for this one write: claimed, then finished or released.
            if hooks is not None:
                hooks.after_claim(taken, ClaimReason.REPLIED)
            try:
                await self.engine.store.commit(taken.id, self.engine.owner_id, decision.change, now)
            except BaseException:
                if hooks is not None:
                    hooks.on_release(taken, "its write failed")
                raise
            apply_change(taken, decision.change, now)
            if hooks is not None:
                hooks.on_finish(taken)
            self.engine._answer_waiters(taken.id, taken)
            return
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.engine._spawn(
            saga, taken, reason=ClaimReason.REPLIED, carry=decision.change, committed=committed
        )
        await committed

    # -- waits: signals from outside -------------------------------------------------------------

    async def signal(
        self,
        saga_id: str,
        name: str,
        payload: Any = None,
        *,
        signal_id: str | None = None,
        error: str | None = None,
    ) -> SignalReceipt:
        """``Engine.signal`` (its docstring says what it promises)."""
        if not (self.engine._opened or self.engine.store.is_open):
            raise EngineNotOpen()
        check_text(name, "the signal name")
        check_text(error, "the signal's error")
        signal_id = signal_id or uuid.uuid4().hex
        check_text(signal_id, "the signal id")
        check_value(payload, f"the payload of signal {name!r}")
        signal = Signal(name, signal_id, payload, error)
        loop = asyncio.get_running_loop()
        patience = loop.time() + self.engine.lease_seconds
        delay = 0.005
        while True:
            if saga_id not in self.engine._runs:
                # The fast path: read the parked saga and apply, taking it in the same write.
                receipt = await self._apply_signal(saga_id, signal)
                if receipt is not None:
                    return receipt
            record = await self.engine.store.load(saga_id)
            if record is None:
                raise SagaNotFound(saga_id)
            if any(
                e.type is EventType.SIGNAL_RECEIVED and e.detail == signal.detail
                for e in record.history
            ):
                return SignalReceipt(saga_id, name, signal_id, duplicate=True)
            saga = self.engine._lookup(record.name, record.version)
            refusal = self._not_waiting(record, saga, signal)
            if refusal is not None and (
                not self._may_still_wait(record, saga, name) or loop.time() >= patience
            ):
                raise NotWaiting(saga_id, name, refusal, record.waiting_for)
            if refusal is None and loop.time() >= patience:
                busy = f"saga {saga_id} is held by another engine: try again"
                raise NotWaiting(saga_id, name, busy, record.waiting_for)
            # Held by an engine (applying another signal, or still running the steps before
            # the wait): look again shortly.
            if saga_id in self.engine._runs:
                future: asyncio.Future[SagaRecord | str | None] = loop.create_future()
                self.engine._waiters.setdefault(saga_id, []).append(future)
                with contextlib.suppress(TimeoutError):  # not wait_for: see Recovery.maintain
                    async with asyncio.timeout(max(patience - loop.time(), 0.001)):
                        await future
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _not_waiting(self, record: SagaRecord, saga: Saga | None, signal: Signal) -> str | None:
        """Why ``record`` cannot take ``signal`` now; None when it waits for it."""
        saga_id, name = record.id, signal.name
        if record.status.is_terminal:
            return f"saga {saga_id} is {record.status}: it waits for nothing"
        waiting = record.waiting_for
        if waiting != f"signal:{name}":
            what = f"waits for {waiting}" if waiting else f"is {record.status}, not waiting"
            return f"saga {saga_id} does not wait for signal {name!r}: it {what}"
        pending = rules.recorded_signal(record)
        if pending is not None:
            return (
                f"saga {saga_id} already received signal {name!r} (signal id "
                f"{pending.signal_id!r}); it is being applied"
            )
        row = rules.waiting_step(record)
        if row is None:
            return f"saga {saga_id} has no wait step in flight"
        if saga is not None:
            step = saga._by_name.get(row.name)
            if step is None or step.wait is None or step.wait.signal != name:
                return f"saga {saga_id}: step {row.name!r} does not wait for signal {name!r}"
        return None

    def _may_still_wait(self, record: SagaRecord, saga: Saga | None, name: str) -> bool:
        """True while the saga is on its way to a wait for ``name`` it has not reached yet
        (a signal may beat the run that parks it), or a signal is being applied."""
        if not record.status.is_active:
            return False
        if rules.recorded_signal(record) is not None:
            return False
        if saga is None:
            return record.waiting_for is None or not record.waiting_for.startswith("signal:")
        for step in saga.steps:
            if step.wait is None or step.wait.signal != name:
                continue
            row = record.steps.get((step.name, Phase.FORWARD))
            if row is None or (row.status is StepStatus.RUNNING and record.waiting_for is None):
                return True
        return False

    def _check_signal_payload(self, saga: Saga, record: SagaRecord, signal: Signal) -> None:
        """Refuse a payload that does not fit the wait's ``reply`` type before recording it."""
        if signal.error is not None:
            return
        row = rules.waiting_step(record)
        assert row is not None
        step = saga.get_step(row.name)
        try:
            step.encode_output(step.decode_output(signal.payload))
        except Exception as exc:
            raise InvalidInput(f"signal {signal.name!r} for saga {record.id}: {exc}") from None

    async def _apply_signal(self, saga_id: str, signal: Signal) -> SignalReceipt | None:
        """Take the saga and apply (or record) ``signal`` if it waits for it; None if it
        could not be taken or does not wait for it (the caller reads the log to say why)."""
        async with self._one_at_a_time(saga_id):
            return await self._take_signal(saga_id, signal)

    async def _take_signal(self, saga_id: str, signal: Signal) -> SignalReceipt | None:
        now = self.engine.clock.now()
        taken, take = await self._take(saga_id, now)
        if taken is None:
            return None
        saga = self.engine._lookup(taken.name, taken.version)
        if saga_id in self.engine._runs:  # our own recovery took it meanwhile
            return None
        if self._not_waiting(taken, saga, signal) is not None or (
            self._needs_history(saga, signal.name) and await self._received(saga_id, signal)
        ):
            await self._release(saga_id, now, take)
            return None
        if saga is not None:
            try:
                self._check_signal_payload(saga, taken, signal)
            except InvalidInput:
                await self._release(saga_id, now, take)
                raise
        receipt = SignalReceipt(saga_id, signal.name, signal.signal_id, duplicate=False)
        if saga is None or not self.engine.execute:
            # Recorded for the engine that runs it: due now, so its next pass claims it.
            change = rules.signal_recorded(taken, signal, now)
            change.take = take
            try:
                await self.engine.store.commit(saga_id, self.engine.owner_id, change, now)
            except TakeConflict:  # written since it was read: the caller reads it again
                return None
            return receipt
        taken.definition = saga
        decision = rules.signal_arrived(saga, taken, signal, now)
        try:  # durable once it returns
            await self._resume_with(saga, taken, decision, "signal", now, None, take)
        except TakeConflict:
            return None
        return receipt

    @staticmethod
    def _needs_history(saga: Saga | None, name: str) -> bool:
        """Whether a saga parked on ``name`` may have taken this signal id already: only if
        it waits for ``name`` more than once (or its definition is unknown here)."""
        if saga is None:
            return True
        return sum(1 for s in saga.steps if s.wait is not None and s.wait.signal == name) > 1

    async def _received(self, saga_id: str, signal: Signal) -> bool:
        record = await self.engine.store.load(saga_id)
        return record is not None and any(
            e.type is EventType.SIGNAL_RECEIVED and e.detail == signal.detail
            for e in record.history
        )

    async def list_waiting(self, prefix: str = "", *, limit: int = 50, offset: int = 0) -> Page:
        """Parked sagas whose ``waiting_for`` starts with ``prefix`` ("signal:payment_confirmed",
        "signal:", "timer", "reply:"), soonest due first."""
        return await self.engine.store.list_waiting(prefix=prefix, limit=limit, offset=offset)

    def _checked_reply(self, saga: Saga, reply: Reply) -> Reply:
        """A successful reply whose output does not fit the step's declared reply type (or
        cannot be stored) becomes a failure saying so: the participant answered, so the
        outcome is known, and retrying would get the same answer."""
        if not reply.ok or reply.phase is Phase.COMPENSATION:
            return reply
        step = saga.get_step(reply.step)
        try:
            output = step.encode_output(step.decode_output(reply.output))
            check_value(output, f"the reply to step {step.name!r}")
        except Exception as exc:
            return dataclasses.replace(reply, ok=False, output=None, error=str(exc))
        return dataclasses.replace(reply, output=output)

    async def due_now(self, record: SagaRecord) -> None:
        """Make a parked saga claimable now (a cancel for it, from an engine that does not
        drive it): otherwise it would sleep on until its timeout, days maybe."""
        async with self._one_at_a_time(record.id):
            await self._make_due(record)

    async def _make_due(self, record: SagaRecord) -> None:
        now = self.engine.clock.now()
        waiting = record.waiting_for
        taken = await self.engine.store.acquire(
            record.id,
            self.engine.owner_id,
            now=now,
            lease_seconds=self.engine.lease_seconds,
            statuses=ACTIVE_STATUSES,
        )
        if taken is None:  # driven somewhere: that engine sees the cancel
            return
        if taken.waiting_for is None or waiting is None:
            await self._release(record.id, now, None)
            return
        due = min(now, taken.parked_until or now)
        await self.engine.store.commit(
            record.id, self.engine.owner_id, Change(park=Park(taken.waiting_for, due)), now
        )
