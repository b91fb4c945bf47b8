"""call_with_timeout: the step's timer, armed only once the action first suspends."""

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from sagaway import step_call
from sagaway.step_call import call_with_timeout


async def test_an_action_that_never_suspends_returns_its_value() -> None:
    async def action(x: int) -> int:
        return x + 1

    assert await call_with_timeout(action, (41,), 5.0) == 42


async def test_an_action_that_suspends_returns_its_value() -> None:
    async def action(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    assert await call_with_timeout(action, (41,), 5.0) == 42


class Later:
    """An awaitable that is not a coroutine: it suspends once on a future, then answers."""

    def __init__(self, future: asyncio.Future[int]) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, Any, int]:
        value = yield from self.future
        return value + 1


async def test_an_awaitable_that_is_not_a_coroutine_is_awaited_through_its_iterator() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.set_result, 41)

    def action() -> Later:
        return Later(future)

    assert await call_with_timeout(action, (), 5.0) == 42


async def test_the_deadline_counts_the_time_before_the_first_suspension(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The action's synchronous part took longer than the timeout (as the monotonic clock
    # read before and after it says): once it suspends it has no time left, whatever the
    # loop's clock says, and times out at the loop's next turn instead of an hour later.
    readings = iter([0.0, 3600.0])
    monkeypatch.setattr(step_call, "monotonic", lambda: next(readings))
    never: asyncio.Event = asyncio.Event()

    async def action() -> None:
        await never.wait()

    with pytest.raises(TimeoutError):
        await call_with_timeout(action, (), 60.0)
