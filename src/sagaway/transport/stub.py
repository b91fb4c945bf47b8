"""A dispatcher for unit tests: a real implementation of the port that keeps everything in
memory (like dramatiq's stub broker), so a test can script what participants answer and what
the network does to the messages.

Two modes:

* request/response (``parks=False``, the default): ``call`` runs the handler registered for the
  command's topic and answers with its reply at once;
* message (``parks=True``): ``publish`` records the commands the engine's relay sends and
  answers nothing by itself. The test takes them (``next_command``), answers them (``answer``),
  delivers replies as it likes (``deliver``: twice, late, out of order) or loses them. With
  ``auto_reply=True`` the participants answer every published command by themselves, as a
  broker with live consumers would.

A handler gets the ``Command`` and returns the step's output (JSON) or a ``Reply``; raising
``StepFailed`` answers a business failure, raising ``TransportError`` makes the call fail as a
network would. With no handler for a topic the participant is unknown: a failure reply naming
it (nothing was executed, so there is nothing to retry).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sagaway.errors import StepFailed
from sagaway.state import OutboxMessage
from sagaway.transport.base import Command, Dispatcher, Reply, ReplyHandler, TransportError

Handler = Callable[[Command], Any]
"""``handler(command)`` (sync or async) -> the output (JSON) or a ``Reply``."""


class StubDispatcher(Dispatcher):
    """In-memory participants for tests (see the module docstring)."""

    def __init__(
        self,
        handlers: Mapping[str, Handler] | None = None,
        *,
        parks: bool = False,
        auto_reply: bool = False,
    ) -> None:
        self.parks = parks
        self.auto_reply = auto_reply
        self._replying: set[asyncio.Task[Reply]] = set()
        self._handlers: dict[str, Handler] = dict(handlers or {})
        self._reply_handler: ReplyHandler | None = None
        self.calls: list[Command] = []  # every command received (called or published), in order
        self.published: list[OutboxMessage] = []  # every message published (parking mode)
        self.pending: list[Command] = []  # published and neither answered nor lost yet
        self.fail_publish = 0  # the next N publish calls raise TransportError (a broker down)
        self._arrived = asyncio.Event()

    # -- participants -----------------------------------------------------------------------

    def register(self, topic: str, handler: Handler) -> None:
        """Answer commands of ``topic`` ("inventory.reserve") with ``handler``."""
        self._handlers[topic] = handler

    def handler(self, participant: str, command: str) -> Callable[[Handler], Handler]:
        """``@stub.handler("inventory", "reserve")``: register the decorated function."""

        def register(fn: Handler) -> Handler:
            self.register(f"{participant}.{command}", fn)
            return fn

        return register

    async def run_handler(self, command: Command) -> Reply:
        """What the participant answers to ``command``."""
        handler = self._handlers.get(command.topic)
        if handler is None:
            return Reply.failure(
                command,
                f"no participant {command.participant!r} answers {command.command!r} through "
                f"this dispatcher (give the Engine a transport that reaches it)",
            )
        try:
            result = handler(command)
            if inspect.isawaitable(result):
                result = await result
        except StepFailed as exc:
            return Reply.failure(command, exc.reason)
        return result if isinstance(result, Reply) else Reply.success(command, result)

    # -- the port ---------------------------------------------------------------------------

    async def call(self, command: Command, timeout: float | None) -> Reply:
        self.calls.append(command)
        if timeout is None:
            return await self.run_handler(command)
        async with asyncio.timeout(timeout):
            return await self.run_handler(command)

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if self.fail_publish:
            self.fail_publish -= 1
            raise TransportError("stub: the broker did not confirm the messages")
        for message in messages:
            command = Command.from_json(message.body)
            self.published.append(message)
            self.calls.append(command)
            if self.auto_reply:  # answered once publish has returned, as a consumer would
                task = asyncio.get_running_loop().create_task(self.answer(command))
                self._replying.add(task)
                task.add_done_callback(self._replying.discard)
            else:
                self.pending.append(command)
        self._arrived.set()

    async def close(self) -> None:
        for task in list(self._replying):
            task.cancel()

    def on_reply(self, handler: ReplyHandler) -> None:
        self._reply_handler = handler  # the latest engine's (a restarted engine replaces it)

    # -- what a test does with published commands -------------------------------------------

    async def next_command(self, topic: str | None = None, *, timeout: float = 5.0) -> Command:
        """Take the oldest pending command (of ``topic``), waiting for one to be published."""
        async with asyncio.timeout(timeout):
            while True:
                for command in self.pending:
                    if topic is None or command.topic == topic:
                        self.pending.remove(command)
                        return command
                self._arrived.clear()
                await self._arrived.wait()

    async def deliver(self, reply: Reply) -> None:
        """Hand ``reply`` to the engine, as a message transport does (any number of times)."""
        if self._reply_handler is None:
            raise RuntimeError("no engine registered a reply handler (is it open?)")
        await self._reply_handler(reply)

    async def answer(self, command: Command) -> Reply:
        """Run the participant's handler for ``command`` and deliver its reply."""
        reply = await self.run_handler(command)
        await self.deliver(reply)
        return reply

    async def answer_next(self, topic: str | None = None, *, timeout: float = 5.0) -> Reply:
        return await self.answer(await self.next_command(topic, timeout=timeout))

    def lose(self, topic: str | None = None) -> list[Command]:
        """Drop the pending commands (of ``topic``): they never reach a participant."""
        lost = [c for c in self.pending if topic is None or c.topic == topic]
        self.pending = [c for c in self.pending if c not in lost]
        return lost
