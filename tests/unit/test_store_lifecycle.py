"""The open/close lifecycle every store inherits from ``SagaStore``: idempotent open and close,
no second life after close, operations refused outside "open", a close that waits for an open
in progress. The backends' own tests prove their ``_open``/``_close``; this proves the guard
around them without a server."""

from __future__ import annotations

import asyncio

import pytest

from sagaway.errors import StoreError
from sagaway.state import SagaStatus
from sagaway.store.memory import MemoryStore


class Recording(MemoryStore):
    """A store with something to open and close: records the hooks' calls and the state each
    one saw, and checks it is open before an operation as the real backends do."""

    _kind = "test"
    _reopenable = False

    def __init__(self) -> None:
        super().__init__("test://here")
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None  # set: _open waits for it
        self.entered: asyncio.Event | None = None  # set by _open before it waits
        self.fail_open = False

    async def _open(self) -> None:
        self.calls.append(("open", self._state))
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_open:
            raise StoreError("cannot connect")

    async def _close(self) -> None:
        self.calls.append(("close", self._state))
        with pytest.raises(StoreError, match=r"test store 'test://here' is not open"):
            self._check_open()

    async def counts(self) -> dict[SagaStatus, int]:
        self._check_open()
        return await super().counts()


async def test_open_and_close_are_idempotent_and_close_runs_while_closing() -> None:
    store = Recording()
    await store.open()
    await store.open()
    assert await store.counts() == {}
    await store.close()
    await store.close()
    assert store.calls == [("open", "new"), ("close", "closing")]


async def test_a_closed_store_does_not_open_again_and_refuses_operations() -> None:
    store = Recording()
    async with store:
        pass
    with pytest.raises(StoreError, match=r"test store 'test://here' is closed"):
        await store.open()
    with pytest.raises(StoreError, match="is not open"):
        await store.counts()
    assert store.calls == [("open", "new"), ("close", "closing")]


async def test_closing_a_store_never_opened_only_marks_it_closed() -> None:
    store = Recording()
    await store.close()
    assert store.calls == []
    with pytest.raises(StoreError, match="is closed"):
        await store.open()


async def test_a_failed_open_leaves_the_store_new() -> None:
    store = Recording()
    store.fail_open = True
    with pytest.raises(StoreError, match="cannot connect"):
        await store.open()
    with pytest.raises(StoreError, match="is not open"):
        await store.counts()
    store.fail_open = False
    await store.open()
    assert await store.counts() == {}
    await store.close()


class ContendedLock(asyncio.Lock):
    """A lock that says when someone has to wait for it: the test's synchronisation point."""

    def __init__(self) -> None:
        super().__init__()
        self.contended = asyncio.Event()

    async def acquire(self) -> bool:
        if self.locked():
            self.contended.set()
        return await super().acquire()


async def test_close_waits_for_an_open_in_progress() -> None:
    store = Recording()
    store.gate = asyncio.Event()
    store.entered = asyncio.Event()
    lock = store._lifecycle = ContendedLock()
    opening = asyncio.create_task(store.open())
    await store.entered.wait()  # open is inside _open, holding the lifecycle lock
    closing = asyncio.create_task(store.close())
    # close has started, and waits for the open to finish (a bound, should it never wait)
    await asyncio.wait_for(lock.contended.wait(), timeout=10)
    assert store.calls == [("open", "new")]
    store.gate.set()
    await asyncio.gather(opening, closing)
    assert store.calls == [("open", "new"), ("close", "closing")]


async def test_the_memory_store_opens_again_after_close() -> None:
    store = MemoryStore()
    assert await store.counts() == {}  # usable without open: it holds no connections
    async with store:
        pass
    async with store:
        assert await store.counts() == {}
