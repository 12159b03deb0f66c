"""One HTTP/1.1 exchange of transport/http_protocol.py: the request whole, and the response
written to the connection, from a direct route's `Answer` or from the ASGI app's messages.
Also the response heads' parts shared by both (status lines, header checks)."""

from __future__ import annotations

import asyncio
import http
import re
from collections.abc import AsyncIterator, Awaitable, Generator
from typing import Any, Protocol

from modelservice_runtime.transport.coalesced_writes import CoalescedWrites
from modelservice_runtime.transport.uvicorn_compat import ServerState


class Connection(Protocol):
    """What an exchange needs of its connection (BufferedHttpProtocol)."""

    loop: asyncio.AbstractEventLoop
    transport: CoalescedWrites
    server_state: ServerState
    write_paused: asyncio.Future[None] | None

    def answered(self, exchange: Exchange) -> None: ...


# Header names and values from the app must not be able to split the response.
_BAD_HEADER_NAME = re.compile(b'[\x00-\x20\x7f()<>@,;:\\[\\]={}\\\\"/?]')
_BAD_HEADER_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()


_STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}


def head_start(status: int, server_state: ServerState) -> list[bytes]:
    """The status line and uvicorn's default headers (date, server), as parts to join."""
    parts = [_STATUS_LINES[status]]
    for name, value in server_state.default_headers:
        parts += (name, b": ", value, b"\r\n")
    return parts


class Answer(Protocol):
    """What a direct route answers with (the app's `Reply` is one): a body, or a `stream`
    of parts sent chunked as they come (server-sent events)."""

    @property
    def status(self) -> int: ...
    @property
    def content_type(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str] | None: ...
    @property
    def stream(self) -> AsyncIterator[bytes] | None: ...


class EndsWithClient:
    """A direct answer that is cancelled when its client leaves before it is sent whole (a
    generation: the client leaving frees its batch row), whether it is still being made or
    being streamed. Awaited like the answer it wraps."""

    __slots__ = ("answering",)

    def __init__(self, answering: Awaitable[Answer]) -> None:
        self.answering = answering

    def __await__(self) -> Generator[Any, None, Answer]:
        return self.answering.__await__()

    def close(self) -> None:
        """The request is never to be answered (its connection is gone)."""
        if asyncio.iscoroutine(self.answering):
            self.answering.close()


class Refusal:
    """An answer the protocol gives itself (413, 400), in the request's turn; the
    connection closes after it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class Exchange:
    """One request, whole, and the response to it: a direct route's `answering`, or the
    ASGI app's, through `receive` and `send`."""

    __slots__ = (
        "answering",
        "body",
        "chunked",
        "complete",
        "conn",
        "disconnected",
        "ends_with_client",
        "head",
        "keep_alive",
        "method",
        "remaining",
        "scope",
        "started",
        "task",
        "waiter",
    )

    def __init__(
        self,
        conn: Connection,
        method: str,
        keep_alive: bool,
        answering: Awaitable[Answer] | None,
        scope: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> None:
        self.conn = conn
        self.method = method
        self.answering = answering
        self.scope = scope
        self.body = body
        self.keep_alive = keep_alive
        self.head = b""  # status line and headers, held until the first body part
        self.started = False
        self.complete = False
        self.disconnected = False
        self.chunked = False
        self.remaining = 0  # body bytes still owed under the response's Content-Length
        self.waiter: asyncio.Future[None] | None = None
        self.ends_with_client = isinstance(answering, EndsWithClient)
        self.task: asyncio.Task[None] | None = None  # what answers it, once started

    async def receive(self) -> dict[str, Any]:
        if self.body is not None and not self.disconnected:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        # Nothing more will come: wait until the response is sent or the client leaves.
        if not (self.complete or self.disconnected):
            self.waiter = self.conn.loop.create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused is not None and not self.disconnected:
            await conn.write_paused
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self.head = self._head(message["status"], message.get("headers", ()))
            self.started = True  # after _head: a header it refuses still gets the 500
            return
        if self.complete or kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} after the response")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.method == "HEAD":
            body = b""
        elif self.chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                body += b"0\r\n\r\n"
        else:
            self.remaining -= len(body)
            if self.remaining < 0 or (not more and self.remaining):
                raise RuntimeError("response body does not match its Content-Length")
        if self.head:
            conn.transport.writelines((self.head, body))
            self.head = b""
        elif body:
            conn.transport.write(body)
        if not more:
            self.complete = True
            self.wake()
            conn.answered(self)

    def reply(self, reply: Answer) -> None:
        """Send a direct route's answer."""
        if self.disconnected:
            return
        headers = [
            (b"content-type", reply.content_type.encode("latin-1")),
            (b"content-length", b"%d" % len(reply.body)),
        ]
        if reply.headers:
            headers += [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
            ]
        head = self._head(reply.status, headers)
        self.started = True
        self.conn.transport.writelines((head, b"" if self.method == "HEAD" else reply.body))
        self.complete = True
        self.conn.answered(self)

    async def stream(self, reply: Answer) -> None:
        """Send a streamed answer, chunked, each part as it comes (the head with the first);
        the stream is closed at its end, also when the client leaves (the protocol cancels
        this then, see EndsWithClient)."""
        parts = reply.stream
        assert parts is not None
        try:
            headers = [(b"content-type", reply.content_type.encode("latin-1"))]
            if reply.headers:
                headers += [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
                ]
            self.head = self._head(reply.status, headers)  # no Content-Length: chunked
            self.started = True
            conn = self.conn
            async for part in parts:
                if conn.write_paused is not None and not self.disconnected:
                    await conn.write_paused
                if self.disconnected:
                    return
                if part:
                    self._write(b"%x\r\n%b\r\n" % (len(part), part))
            if not self.disconnected:
                self._write(b"0\r\n\r\n")
                self.complete = True
                self.wake()
                conn.answered(self)
        finally:
            aclose = getattr(parts, "aclose", None)
            if aclose is not None:
                await aclose()

    def _write(self, data: bytes) -> None:
        if self.head:
            self.conn.transport.writelines((self.head, data))
            self.head = b""
        else:
            self.conn.transport.write(data)

    def _head(self, status: int, headers: Any) -> bytes:
        parts = head_start(status, self.conn.server_state)
        length = None
        closing = False
        for name, value in headers:
            if _BAD_HEADER_NAME.search(name) or _BAD_HEADER_VALUE.search(value):
                raise RuntimeError(f"invalid response header {name!r}: {value!r}")
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"connection" and b"close" in value.lower():
                closing = True
            elif lower == b"transfer-encoding":
                continue  # framing is this protocol's business
            parts += (name, b": ", value, b"\r\n")
        if closing:
            self.keep_alive = False
        elif not self.keep_alive:
            parts.append(b"connection: close\r\n")
        no_body = self.method == "HEAD" or status in (204, 304)
        if length is not None:
            self.remaining = 0 if no_body else length
        elif not no_body:
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)
