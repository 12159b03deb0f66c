"""Writes gathered per turn of the event loop: the HTTP protocol's writes leave in one syscall.

uvicorn's own protocol writes a response in two parts, the status line and headers, then
the body, and uvloop sends each write at once: two syscalls and two TCP segments, and the
client woke up twice to read it. On loopback the sender also pays for the receiver's TCP
processing. The runtime's protocol (http_protocol.py, which writes through this transport)
writes a response in one `writelines` itself, and gathering still pays: MLP JSON, wrk, 16
connections, 2 workers, 22.8-24.5k req/s with it against 17.7-21.0k without (2 alternating
pairs); the CNN, bound by compute, within noise either way.

Writes made in one step of the event loop are gathered and go out together from a
callback on the loop's next turn, with `writelines`, which uvloop (and asyncio on 3.12+)
turns into one writev, so a large body is not copied to be joined. Sending at the next
turn measured better than sending as soon as a response is complete (with uvicorn's
protocol: 15.5-15.9k against 12.5-14.9k req/s, the latter no better than not gathering at
all); a likely reason is that every response finished in one turn then leaves in a row,
after the batch that answered them all.

Closing the connection, or writing EOF, sends what is gathered first, so nothing is
reordered or lost; aborting drops it, as aborting the transport would.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites(asyncio.Transport):
    """A transport that gathers writes and sends them on the loop's next turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    # --- writing ----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        # The caller may reuse a bytearray once write() returns; bytes are kept as they are.
        self._pending.append(data if isinstance(data, bytes) else bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send everything gathered (a no-op when nothing is, or the transport is closing)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the connection is gone; the underlying transport would drop it too
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    # --- everything else is the underlying transport's ------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()
