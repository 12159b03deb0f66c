"""CoalescedWrites on real loopback TCP connections, under asyncio's own loop and uvloop
(the runtime's), read by a plain client socket so each test sees what was actually sent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
import uvloop
from modelservice_runtime.transport.coalesced_writes import CoalescedWrites

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Keep(asyncio.Protocol):
    """Server side: keeps its transport so the test can write through it."""

    def __init__(self) -> None:
        self.made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's.
        self.made.set_result(cast(asyncio.Transport, transport))


Scenario = Callable[[CoalescedWrites, socket.socket], Awaitable[None]]


def run(loop_name: str, scenario: Scenario) -> None:
    """Connect a client to a real server on 127.0.0.1 and run `scenario(writer, client)`."""

    async def main() -> None:
        protocols: list[Keep] = []

        def factory() -> Keep:
            protocols.append(Keep())
            return protocols[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            while not protocols:
                await asyncio.sleep(0.001)
            transport = await asyncio.wait_for(protocols[0].made, 5)
            client.setblocking(False)
            await scenario(CoalescedWrites(transport, asyncio.get_running_loop()), client)
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(main())


def received(client: socket.socket) -> bytes | None:
    """What has arrived so far (b"" on EOF), or None if nothing has."""
    try:
        return client.recv(1 << 20)
    except BlockingIOError:
        return None


async def read_until_eof(client: socket.socket, limit_s: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    parts = []
    while loop.time() < deadline:
        try:
            chunk = client.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        except ConnectionResetError:
            return b"".join(parts)  # ended by a reset rather than a FIN: ended all the same
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
    pytest.fail(f"no EOF within {limit_s} s; got {sum(map(len, parts))} bytes")


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_writes_of_one_step_leave_together_on_the_next_turn(loop_name: str) -> None:
    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writer.write(b"ok")
        # On loopback a send lands in the peer's queue at once: nothing has been sent yet.
        assert received(client) is None
        assert writer.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert received(client) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert writer.get_write_buffer_size() == 0

    run(loop_name, scenario)


def test_a_large_body_arrives_whole_and_in_order(loop_name: str) -> None:
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB: more than the socket buffers take at once

    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        writer.write(b"head:")
        writer.writelines([body[:1000], memoryview(body)[1000:]])
        writer.close()
        assert await read_until_eof(client) == b"head:" + body

    run(loop_name, scenario)


def test_close_sends_what_is_gathered_before_the_end(loop_name: str) -> None:
    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        writer.write(b"last words")
        writer.close()
        assert writer.is_closing()
        assert await read_until_eof(client) == b"last words"
        writer.flush()  # the scheduled flush, after close: nothing left, no error

    run(loop_name, scenario)


def test_write_eof_sends_what_is_gathered_first(loop_name: str) -> None:
    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        writer.write(b"all of it")
        writer.write_eof()
        assert await read_until_eof(client) == b"all of it"
        writer.close()

    run(loop_name, scenario)


def test_abort_drops_what_is_gathered(loop_name: str) -> None:
    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        writer.write(b"never sent")
        writer.abort()
        await asyncio.sleep(0.01)
        assert await read_until_eof(client) == b""

    run(loop_name, scenario)


def test_a_reused_bytearray_is_sent_as_it_was_when_written(loop_name: str) -> None:
    async def scenario(writer: CoalescedWrites, client: socket.socket) -> None:
        buffer = bytearray(b"first")
        writer.write(buffer)
        buffer[:] = b"XXXXX"
        writer.close()
        assert await read_until_eof(client) == b"first"

    run(loop_name, scenario)
