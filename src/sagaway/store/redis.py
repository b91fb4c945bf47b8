"""The saga log in Redis: every transition is one Lua script, run atomically in one round trip.

``redis://host:6379/0`` (or ``rediss://`` for TLS, ``redis://:password@host``). Query
parameters: ``prefix`` (default ``sagaway``) namespaces every key, so several applications or
test runs share one server; any other parameter is passed to redis-py (``socket_timeout``,
``health_check_interval``, ``ssl_*``, ...) and overrides the store's defaults below. Needs a
standalone Redis (or a Sentinel-managed primary), not Redis Cluster: the scripts touch index
keys they do not declare. Keys and scripts: ``_redis_scripts``.

**Durability: Redis acknowledges a transition once it is in the server's memory.**

* Without AOF (Redis' default, and this project's development server): a Redis restart or crash
  loses *every* saga; RDB snapshots, if configured, bring back a state minutes old, whose
  sagas then re-run steps already done (the participants' idempotency keys absorb that, but
  sagas started since the snapshot are gone).
* ``appendonly yes`` + ``appendfsync everysec``: a crash of the Redis process loses nothing it
  acknowledged; a crash of its machine (power, kernel) may lose about the last second of
  transitions. A crash of a worker loses nothing in any configuration.
* ``appendonly yes`` + ``appendfsync always``: every script's writes are fsynced before the
  reply, the same guarantee as the SQLite and PostgreSQL stores, at a large cost in throughput.

An option to wait for the fsync per transition (``WAITAOF``) needs Redis 7.2; the server this was
developed against is 7.0, so there is none yet: configure ``appendfsync always`` instead.
``docs/stores.md`` has the table of guarantees per store.

Transport: redis-py (``redis.asyncio``) does the connections, reconnects and RESP parsing
(with ``hiredis`` when it is installed, as the ``redis`` extra does). On top of it a small
batcher (``_redis_batch``) gives concurrent sagas one round trip per batch: every command issued
in one event-loop turn, or while the previous batch is in flight, goes out as one
``pipeline(transaction=False)``, and each caller's future gets its own reply or error
(``execute(raise_on_error=False)``), the Redis counterpart of the SQLite store's group commit.
Each call is still its own EVALSHA, atomic on its own; a failing one (``LeaseLost``,
``SagaNotFound``) affects no other.

The scripts are sent as plain ``EVALSHA`` in the pipeline, not through redis-py ``Script``
objects: on a pipeline those send ``SCRIPT EXISTS`` before every batch, a second round trip each
time. They are loaded at ``open`` and again on ``NOSCRIPT`` (a server restart), which is safe
because a script that was not found did not run.

The store's command client never retries a batch (``Retry(NoBackoff(), 0)``): a transition
that may have run must not run twice (a COMMIT would append its events twice). A connection
lost mid-batch fails that batch's callers with ``StoreError`` (outcome unknown: the engine
resumes such a saga from the log); the next batch connects again (redis-py's pool also replaces
an idle connection the server closed before using it). A batch with no reply in
``REPLY_TIMEOUT`` (30 s, in ``_redis_batch``) fails the same way, so a hung server cannot hang
every saga: one deadline per batch rather than redis-py's ``socket_timeout`` on every reply
read, which cost about 8 % of the benchmark's CPU (a ``socket_timeout`` in the URL still
applies).
``health_check_interval`` PINGs a connection idle for 30 s before reusing it.

Measured (``benchmarks/engine_throughput.py``, N=10000, C=32, this project's 2-core machine,
shared with other runs): 3,550 - 3,800 sagas/s when quiet, 1,400 - 3,300 under load; about
0.3 ms of engine-process CPU per saga, against 0.2 ms for the hand-written RESP connection this
replaced (5,000 - 5,400 sagas/s when quiet). ``docs/stores.md`` has the table.

``on_work``: creating a PENDING saga and handing a lease back (an admin retry) ``PUBLISH`` on
``PREFIX:work`` from inside the script; a listener task calls the engines' callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sagaway.errors import (
    CancelPending,
    CancelRefused,
    LeaseLost,
    SagaNotFound,
    StoreError,
    TakeConflict,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    OutboxMessage,
    Phase,
    SagaRecord,
    SagaStatus,
    cancel_refusal,
    refused_cancel,
)
from sagaway.store import _redis_scripts as lua
from sagaway.store._codec import check_change, check_new, storable_text
from sagaway.store._codec import dumps as _dumps
from sagaway.store._redis_batch import Batcher, command_client
from sagaway.store._redis_codec import (
    NO_OUTBOX,
    event_json,
    loaded,
    message_from_json,
    opt,
    outbox_items,
    parse_url,
    saga_from_hash,
    step_items,
    time_arg,
)
from sagaway.store.base import OutboxStore, Page, PruningStore, TakingStore

__all__ = ["RedisStore", "parse_url"]

log = logging.getLogger("sagaway.store.redis")
_CANCEL_ATTEMPTS = 20  # a cancel decided on a snapshot that a step's start keeps invalidating


class RedisStore(OutboxStore, PruningStore, TakingStore):
    """The saga log in Redis; see the module docstring for the layout, the pipeline and the
    durability Redis gives. Bound to the event loop that calls ``open()``."""

    _kind = "Redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._redis_url, self.prefix = parse_url(url)
        self._client: Redis | None = None
        self._batcher: Batcher | None = None
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (sha, source)
        self._listener: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def redis(self) -> Redis:
        """The redis-py client (for reads an application keeps next to its sagas)."""
        if self._client is None:
            raise self._not_open()
        return self._client

    # -- lifecycle --------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, check the server, load the scripts (and start the pub/sub listener)."""
        client = Redis.from_url(self._redis_url, decode_responses=True)
        # The hot path's client: named, so an operator sees in CLIENT LIST which connection is
        # the saga store's; never retries a batch (module docstring). URL parameters win.
        commands = command_client(self._redis_url, self.prefix)
        self._batcher = Batcher(commands)
        self._scripts = {
            name: (commands.register_script(getattr(lua, name)).sha, getattr(lua, name))
            for name in lua.SCRIPTS
        }
        try:
            await self._load_scripts()
            await self._index_ids()
            await self._index_definitions()
        except BaseException as exc:
            await self._batcher.aclose()
            await commands.aclose()
            await client.aclose()
            cause = exc.__cause__
            if isinstance(cause, (RedisConnectionError, RedisTimeoutError)):
                parts = urlsplit(self._redis_url)
                where = f"{parts.hostname}:{parts.port or 6379}"
                raise StoreError(f"redis: cannot connect to {where}: {cause}") from cause
            raise
        self._client = client
        if self._callbacks:
            self._start_listener()

    async def _load_scripts(self) -> None:
        """SCRIPT LOAD every script (one batch); raises StoreError."""
        await asyncio.gather(
            *(self.execute("SCRIPT", "LOAD", source) for _, source in self._scripts.values())
        )

    async def _index_ids(self) -> None:
        """Build ``P:ids`` (find_ids' index) for a log written before it existed; a no-op once
        built. Idempotent: two processes opening the same log may both run it."""
        if await self.execute("HGET", f"{self.prefix}:meta", "ids"):
            return
        everything, ids, chunk, first = f"{self.prefix}:all", f"{self.prefix}:ids", 5_000, 0
        while batch := await self.execute("ZRANGE", everything, first, first + chunk - 1):
            await self.execute("ZADD", ids, *(x for saga_id in batch for x in ("0", saga_id)))
            first += chunk
        await self.execute("HSET", f"{self.prefix}:meta", "ids", "1")

    async def _index_definitions(self) -> None:
        """Build ``P:defs`` (the stranded count's walk) for a log written before it existed; a
        no-op once built, or for an empty log. Its definitions are those of the claim-index
        keys (``P:free|leased|parked:V:N``), found by SCAN: a key there for the whole scan is
        returned; one created meanwhile was created by a script that adds its definition
        itself (enqueue). Idempotent, like ``_index_ids``. A process of an older version
        writing meanwhile does not add to it (nor to ``P:ids``): upgrade all writers."""
        meta = f"{self.prefix}:meta"
        if await self.execute("HGET", meta, "defs"):
            return
        if await self.execute("ZCARD", f"{self.prefix}:all"):
            escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix)
            queues = tuple(f"{self.prefix}:{queue}:" for queue in ("free", "leased", "parked"))
            cursor = "0"
            while True:
                cursor, keys = await self.execute(
                    "SCAN", cursor, "MATCH", escaped + ":*", "COUNT", 1000, "TYPE", "zset"
                )
                found = {
                    key[len(queue) :] for key in keys for queue in queues if key.startswith(queue)
                }
                if found:
                    await self.execute("SADD", f"{self.prefix}:defs", *found)
                if str(cursor) == "0":
                    break
        await self.execute("HSET", meta, "defs", "1")

    async def _close(self) -> None:
        """Wait for the replies owed, stop the listener, disconnect."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        assert self._client is not None
        assert self._batcher is not None
        await self._batcher.aclose()
        for client in (self._batcher.client, self._client):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def purge(self) -> int:
        """Delete every key under this store's prefix; returns how many. For tests and
        benchmarks that share a server: never call it on a store that holds real sagas."""
        client = self.redis
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":*"
        deleted = 0
        try:
            batch: list[str] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await client.unlink(*batch)
        except RedisError as exc:
            raise StoreError(f"redis: {exc}") from exc
        return deleted

    # -- notifications ----------------------------------------------------------------------

    def on_work(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._state == "open" and self._listener is None:
            self._start_listener()

    def _start_listener(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), name="sagaway-redis-listen"
        )

    def _fire(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.exception("on_work callback failed")

    async def _listen(self) -> None:
        """Subscribe and call back on each message; resubscribe after a connection loss.

        After each (re)subscription the callbacks run once: work published while we were not
        subscribed is found by the recovery pass that triggers, so no wake-up is ever lost."""
        channel, delay = f"{self.prefix}:work", 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._fire()
                delay = 0.1
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._fire()
            except (RedisError, OSError) as exc:
                log.warning("redis pub/sub lost (%s); resubscribing in %.1f s", exc, delay)
                await asyncio.sleep(delay)  # reconnect backoff, not synchronisation
                delay = min(delay * 2, 5.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- commands ---------------------------------------------------------------------------

    def _submit(self, command: tuple[str, ...]) -> asyncio.Future[Any]:
        # Not _check_open(): open() loads the scripts through the batcher before the state is
        # "open"; once closed, the batcher refuses commands itself.
        if self._batcher is None:
            raise self._not_open()
        return self._batcher.submit(command)

    async def execute(self, *command: str | int | float) -> Any:
        """Send one Redis command in the store's next batch; return the reply as a redis-py
        pipeline gives it (bulk strings decoded as UTF-8).

        For steps that keep their own records in the same Redis (a ledger, a dedupe set): they
        then share the store's round trips instead of paying their own. A command is atomic on
        its own, not with any transition. An error reply raises ``StoreError``."""
        try:
            return await self._submit(tuple(a if isinstance(a, str) else str(a) for a in command))
        except ResponseError as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def _call(self, name: str, args: list[str]) -> Any:
        command = ("EVALSHA", self._scripts[name][0], "0", self.prefix, *args)
        try:
            try:
                return await self._submit(command)
            except NoScriptError:  # the server lost its scripts (a restart): reload, resend
                await self._load_scripts()
                return await self._submit(command)
        except ResponseError as exc:
            raise StoreError(f"redis: {exc}") from exc

    # -- writes -----------------------------------------------------------------------------

    async def create(self, new: NewSaga) -> tuple[str, bool]:
        check_new(new)  # before it joins a pipeline: a bad value fails its caller only
        at = repr(float(new.at))
        saga = [
            *("id", new.id, "name", new.name, "version", str(new.version)),
            *("status", new.status.value, "input", _dumps(new.input)),
            *("created", at, "updated", at),
        ]
        for field, value in (
            ("key", new.idempotency_key),
            ("owner", new.owner),
            ("lease", time_arg(new.lease_expires_at) or None),
            ("deadline", time_arg(new.deadline_at) or None),
        ):
            if value is not None:
                saga += (field, value)
        args = [
            new.id,
            opt(new.idempotency_key),
            new.name,
            str(new.version),
            new.status.value,
            at,
            opt(new.owner),
            time_arg(new.lease_expires_at),
            str(len(saga)),
            *saga,
            *step_items(new.steps),
            *map(event_json, new.events),
        ]
        code, saga_id = await self._call("CREATE", args)
        if code == -1:
            raise StoreError(f"saga id {new.id!r} already exists")
        return str(saga_id), code == 1

    async def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
        check_change(change)
        status = change.status
        park = change.park
        if park is not None:
            parking = ("=" + park.waiting_for, repr(float(park.until)))
        else:
            parking = ("-" if change.unpark else "", "")
        take = change.take
        taking = ("", "") if take is None else (str(take.fence), repr(float(take.until)))
        code = await self._call(
            "COMMIT",
            [
                saga_id,
                opt(owner),
                repr(float(at)),
                "" if status is None else "=" + status.value,
                opt(change.error),
                "1" if change.release_lease else "0",
                "1" if change.clear_cancel else "0",
                "1" if change.unless_cancelled else "0",
                *parking,
                *taking,
                *(outbox_items(change.outbox) if change.outbox else NO_OUTBOX),
                *step_items(change.steps),
                *map(event_json, change.events),
            ],
        )
        if code == -1:
            raise SagaNotFound(saga_id)
        if code == -2:
            raise LeaseLost(f"saga {saga_id} is no longer leased to {owner}")
        if code == -4:
            raise CancelPending(f"saga {saga_id}: a cancel is pending")
        if code == -5:
            raise TakeConflict(f"saga {saga_id} was written since it was read")

    async def claim(
        self,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        definitions: Sequence[tuple[str, int]],
        limit: int,
        include_own: bool = False,
    ) -> list[SagaRecord]:
        if not definitions or limit <= 0:
            return []
        event = event_json(Event(at=now, type=EventType.SAGA_CLAIMED, detail=owner))
        args = [owner, repr(float(now)), repr(float(now + lease_seconds)), str(limit)]
        args += ["1" if include_own else "0", event]
        for name, version in definitions:
            args += (name, str(version))
        rows = await self._call("CLAIM", args)
        return [loaded(saga, steps) for saga, steps in rows]

    async def acquire(
        self,
        saga_id: str,
        owner: str,
        *,
        now: float,
        lease_seconds: float,
        statuses: Sequence[SagaStatus],
        event: Event | None = None,
    ) -> SagaRecord | None:
        args = [saga_id, owner, repr(float(now)), repr(float(now + lease_seconds))]
        args += ["" if event is None else "=" + event_json(event), *(s.value for s in statuses)]
        reply = await self._call("ACQUIRE", args)
        if reply[0] == -1:
            raise SagaNotFound(saga_id)
        if reply[0] == 0:
            return None
        saga, steps = reply[1]
        return loaded(saga, steps)

    async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> list[str]:
        ids: list[str] = await self._call("RENEW", [owner, repr(float(now + lease_seconds))])
        return ids

    async def request_cancel(
        self, saga_id: str, event: Event, at: float, *, until: str | None = None
    ) -> SagaRecord:
        # Decided in Python from a snapshot, applied by a script only if that snapshot still
        # holds (compare-and-set): the rule stays in one place, state.cancel_refusal.
        for _ in range(_CANCEL_ATTEMPTS):
            record = await self.load(saga_id, history=False)
            if record is None:
                raise SagaNotFound(saga_id)
            started = [name for name, phase in record.steps if phase is Phase.FORWARD]
            reason = cancel_refusal(saga_id, record.status, record.cancel_requested, started, until)
            if reason is not None:
                action, pushed = "push", refused_cancel(event, reason)
            else:
                action, pushed = ("none" if record.cancel_requested else "flag"), event
            reply = await self._call(
                "REQUEST_CANCEL",
                [
                    saga_id,
                    repr(float(at)),
                    record.status.value,
                    "1" if record.cancel_requested else "",
                    str(len(record.steps)),
                    action,
                    event_json(pushed),
                ],
            )
            if reply[0] == -1:
                raise SagaNotFound(saga_id)
            if reply[0] == -2:
                continue  # a step started, or the status changed, meanwhile: decide again
            if reason is not None:
                raise CancelRefused(reason)
            return loaded(reply[1], reply[2], reply[3])
        raise StoreError(f"redis: cancel of saga {saga_id} kept racing its progress")

    # -- reads ------------------------------------------------------------------------------

    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        if not storable_text(saga_id):
            return None
        reply = await self._call("LOAD", [saga_id, "1" if history else "0"])
        return loaded(*reply) if reply else None

    async def peek(self, saga_id: str) -> SagaRecord | None:
        return await self.load(saga_id, history=False)

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        if status is not None and name is not None:
            index = f"sn:{status.value}:{name}"
        elif status is not None:
            index = f"status:{status.value}"
        elif name is not None:
            index = f"name:{name}"
        else:
            index = "all"
        reply = await self._call("LIST", [index, str(max(offset, 0)), str(max(limit, 1))])
        items = [saga_from_hash(flat) for flat in reply[1:]] if limit > 0 else []
        return Page(items=items, total=int(reply[0]))

    async def counts(self) -> dict[SagaStatus, int]:
        sizes = await asyncio.gather(
            *(self.execute("ZCARD", f"{self.prefix}:status:{s.value}") for s in SagaStatus)
        )
        return {s: int(n) for s, n in zip(SagaStatus, sizes, strict=True) if n}

    async def list_waiting(self, *, prefix: str = "", limit: int = 50, offset: int = 0) -> Page:
        reply = await self._call("WAITING", [prefix, str(max(offset, 0)), str(max(limit, 1))])
        items = [saga_from_hash(flat) for flat in reply[1:]] if limit > 0 else []
        return Page(items=items, total=int(reply[0]))

    # -- outbox -----------------------------------------------------------------------------

    async def outbox_pending(
        self, *, limit: int, older_than: float | None = None
    ) -> list[OutboxMessage]:
        if limit <= 0:
            return []
        until = "+inf" if older_than is None else "(" + repr(float(older_than))
        reply = await self._call("OUTBOX_PENDING", [until, str(limit)])
        return [message_from_json(text) for text in reply]

    async def outbox_delete(self, ids: Collection[str]) -> int:
        wanted = [i for i in ids if storable_text(i)]  # one that cannot be stored is not there
        if not wanted:
            return 0
        deleted: int = await self._call("OUTBOX_DELETE", wanted)
        return int(deleted)

    async def outbox_count(self) -> int:
        return int(await self.execute("ZCARD", f"{self.prefix}:outbox"))

    async def find_ids(self, prefix: str, *, limit: int = 2) -> list[str]:
        if limit <= 0 or not storable_text(prefix):
            return []
        ids: list[str] = await self._call("FIND_IDS", [prefix, str(limit)])
        return ids

    async def stranded(
        self, *, now: float, owner: str, known: Collection[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        args = [repr(float(now)), owner]
        for name, version in known:
            args += (name, str(version))
        flat = await self._call("STRANDED", args)
        found = {(flat[i], int(flat[i + 1])): int(flat[i + 2]) for i in range(0, len(flat), 3)}
        return {key: n for key, n in found.items() if key not in known}

    # -- retention (scripts PRUNABLE, PRUNE, PIN) -------------------------------------------

    async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
        if limit <= 0:
            return []
        ids: list[str] = await self._call("PRUNABLE", [repr(float(finished_before)), str(limit)])
        return ids

    async def prune(self, ids: Collection[str], *, finished_before: float) -> list[str]:
        wanted = list(dict.fromkeys(i for i in ids if storable_text(i)))
        if not wanted:
            return []
        gone: list[str] = await self._call("PRUNE", [repr(float(finished_before)), *wanted])
        return gone

    async def set_pinned(self, saga_id: str, pinned: bool) -> SagaRecord:
        reply = (
            await self._call("PIN", [saga_id, "1" if pinned else "0"])
            if storable_text(saga_id)
            else []
        )
        if not reply:
            raise SagaNotFound(saga_id)
        return loaded(reply[0], reply[1])
