"""The AMQP connection's coalescing writer on a real loopback socket: what one loop turn writes
leaves in one transport write, in order; nothing written is passed by a later write, an EOF or
a close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from yarl import URL

from sagaway.transport._amqp_socket import CoalescingTCP, CoalescingWriter


class Peer:
    """A loopback server that keeps every byte a connection sent until its EOF."""

    def __init__(self) -> None:
        self.received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.set_result(await reader.read())  # until EOF
        writer.close()


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, URL]]:
    server_side = Peer()
    server = await asyncio.start_server(server_side.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield server_side, URL(f"amqp://127.0.0.1:{port}")


async def _connect(url: URL) -> tuple[CoalescingWriter, list[bytes]]:
    """A coalescing writer to ``url``, and the list of its transport's writes."""
    _, writer = await CoalescingTCP().create(url)
    assert isinstance(writer, CoalescingWriter)
    writes: list[bytes] = []
    transport: Any = writer.transport
    real_write = transport.write

    def recording(data: bytes) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = recording
    return writer, writes


async def test_one_turn_of_writes_is_one_transport_write_in_order(
    peer: tuple[Peer, URL],
) -> None:
    server_side, url = peer
    writer, writes = await _connect(url)
    writer.write(b"frame-1;")
    writer.writelines([b"frame-2;", b"frame-3;"])
    writer.write(b"frame-4;")
    assert writes == [], "held until the loop turns"
    await asyncio.sleep(0)  # one loop turn: the flush scheduled by the first write runs
    assert writes == [b"frame-1;frame-2;frame-3;frame-4;"]
    writer.write(b"frame-5;")
    await asyncio.sleep(0)
    assert writes[1:] == [b"frame-5;"], "a later turn's writes leave in a write of their own"
    writer.write_eof()
    writer.close()
    assert await server_side.received == b"frame-1;frame-2;frame-3;frame-4;frame-5;"


async def test_what_is_held_goes_before_the_eof_and_the_close(peer: tuple[Peer, URL]) -> None:
    """aiormq ends a connection with its Close frame, then ``write_eof`` and ``close``,
    possibly in one turn: the frame must reach the peer, before the end."""
    server_side, url = peer
    writer, _ = await _connect(url)
    writer.write(b"close-frame")
    writer.write_eof()
    writer.close()
    await writer.wait_closed()
    assert await server_side.received == b"close-frame"
