"""One delivery from a queue, as the consumers here use it: aiormq's message, settled on its
channel.

aio-pika wraps every delivery in an ``IncomingMessage`` that decodes all of its properties into
attributes up front (callgrind: ~160k instructions a delivery, more than publishing a message
costs); the consumers read four of them. ``Delivery`` reads them from aiormq's frame when asked.
"""

from __future__ import annotations

from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage


class Delivery:
    """A delivery on a consumer with manual acks: its body and the properties the consumers
    read, and ``ack`` / ``nack`` / ``reject`` on the channel that delivered it."""

    __slots__ = ("_channel", "_message", "body", "delivery_tag", "redelivered")

    def __init__(self, message: DeliveredMessage, channel: AbstractChannel) -> None:
        self._message = message
        self._channel = channel
        self.body: bytes = message.body
        self.delivery_tag: int = message.delivery_tag or 0
        self.redelivered = bool(message.redelivered)

    @property
    def message_id(self) -> str | None:
        return self._message.header.properties.message_id

    @property
    def reply_to(self) -> str | None:
        return self._message.header.properties.reply_to

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self._message.header.properties.headers or {})

    async def ack(self) -> None:
        await self._channel.basic_ack(self.delivery_tag)

    async def nack(self, requeue: bool = True) -> None:
        await self._channel.basic_nack(self.delivery_tag, requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self._channel.basic_reject(self.delivery_tag, requeue=requeue)
