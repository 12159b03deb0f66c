"""HTTP/1.1 for uvicorn that reads each request whole and answers inference without ASGI.

Why not uvicorn's own httptools protocol: measured on this project's 2-core machine (wrk,
16 connections, one process, a 49 KB binary tensor body), the same parser (httptools) and
loop (uvloop) answering straight from the protocol cost about 17 us of server CPU per
request; an ASGI app that only reads the body cost 66-85 us under uvicorn's protocol and
53-69 us under this one. Under uvicorn the body is copied twice (into a bytearray, then out
of it), the app's task is woken once per TCP read of the body, and each response is two
writes; ASGI itself (scope, messages, the app's coroutines, the framework's request and
response objects) is most of the rest. So inference requests, which are the traffic, go
to `direct` routes: headers and the whole body in, an `Answer` out. On the runtime with a
zero-compute model that took the cost per request from about 114 us to 91-98 us.

This protocol keeps uvicorn for everything else (sockets, workers, signals, lifespan,
graceful shutdown: it honours uvicorn's protocol contract, `server_state` and `shutdown()`)
and changes only how a connection is read and written:

- A request's body is gathered as it arrives (chunks in a list, joined once). When the
  request is complete, `direct` gets it first; if it declines, the ASGI app is started and
  its one `receive()` returns the whole body.
  Bodies over `max_body_bytes` are never gathered: the client gets a 413 with
  `{"error": ...}` as soon as the size is known (from Content-Length, or while counting a
  chunked body) and the connection is closed, so no refused upload is read to its end.
- The status line, headers and body leave in one `writelines`, and every write goes through
  `CoalescedWrites` (coalesced_writes.py): what one turn of the event loop writes leaves in
  one writev on the next.
- Requests are answered in order. A pipelined request waits, with reading paused, until the
  one before it is answered; a malformed request gets a 400 in its turn and ends the
  connection, as the parser cannot find where the next request would start.
- A direct answer may be a stream (server-sent events), sent chunked part by part; one
  marked `EndsWithClient` (a generation) is cancelled when its client leaves, so the
  client leaving a non-streamed generation frees its batch row too.
- Keep-alive (closed after uvicorn's --timeout-keep-alive when idle), `Expect:
  100-continue`, HEAD, chunked request bodies, responses without Content-Length (sent
  chunked) and back-pressure from a slow reader work as they do under uvicorn.
- Unlike uvicorn, a request that stops arriving (nothing for `request_timeout_s` with part
  of it read: a slowloris) gets a 408 and the connection is closed; a connection that sends
  nothing at all for that long, or whose client reads nothing of its answer for that long,
  is closed too. Otherwise each would be held open, with its buffers, for as long as the
  client wished. One timer per connection serves every timeout: it is not set again for
  each request, only moved when it fires early.

Upgrades (WebSocket, h2c) are not offered: the request is served as plain HTTP/1.1 and the
connection closed after it, which RFC 9110 allows.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
from modelservice_runtime.errors import body_too_large, error_body
from modelservice_runtime.transport.coalesced_writes import CoalescedWrites
from modelservice_runtime.transport.http_exchange import (
    Answer,
    EndsWithClient,
    Exchange,
    Refusal,
    head_start,
)
from modelservice_runtime.transport.uvicorn_compat import (
    Config,
    ServerState,
    get_local_addr,
    get_remote_addr,
    is_ssl,
)

log = logging.getLogger("modelservice.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# (method, path, headers, body) -> the answer, or None when the ASGI app must see the
# request. Names in `headers` are in lower case; the awaitable is awaited in the request's
# turn and must not raise.
Direct = Callable[[str, str, list[tuple[bytes, bytes]], bytes], Awaitable[Answer] | None]


class BufferedHttpProtocol(asyncio.Protocol):
    """One client connection. Made by uvicorn (`Config(http=...)`) with its config and
    server state; `max_body_bytes`, `request_timeout_s`, `direct` and `on_closed` are set by
    `http_protocol()`."""

    max_body_bytes = 64 * 1024 * 1024
    request_timeout_s = 60.0
    direct: Direct | None = None
    on_closed: Callable[[], None] | None = None  # called once when the connection ends

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.root_path = config.root_path
        self.keep_alive_s = config.timeout_keep_alive
        self.server_state = server_state
        self.app_state = app_state
        self.parser = httptools.HttpRequestParser(self)
        # Answer a request even when the client sent more after "Connection: close".
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.current: Exchange | None = None  # the request being answered
        self.waiting: deque[Exchange | Refusal] = deque()
        self.write_paused: asyncio.Future[None] | None = None
        self.reading = True
        self.closing = False  # uvicorn is shutting down, or the parser gave up
        # The connection's one timer (see _check_time), and the times it checks.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.last_read = 0.0
        self.idle_since = 0.0
        self.paused_since = 0.0  # the client stopped reading what we send
        self.answered_any = False  # idle after an answer: the keep-alive timeout applies

        # The request being parsed.
        self.receiving = False  # part of it has arrived: the connection is not idle
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.expect_continue = False
        self.refused = False  # a 4xx is on its way and ends the connection: parse no more

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.transport = CoalescedWrites(transport, self.loop)
        self.server = get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.last_read = self.idle_since = self.loop.time()
        self._set_timer(self.idle_since + self.request_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._lost()
        finally:
            if self.on_closed is not None:
                self.on_closed()

    def _lost(self) -> None:
        self.server_state.connections.discard(self)  # type: ignore[arg-type]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for pending in self.waiting:  # never to be answered: close their coroutines
            answering = pending.answering if isinstance(pending, Exchange) else None
            if isinstance(answering, EndsWithClient) or asyncio.iscoroutine(answering):
                answering.close()
        self.waiting.clear()
        current = self.current
        if current is not None:
            current.disconnected = True
            current.wake()
            if current.ends_with_client and current.task is not None and not current.complete:
                current.task.cancel()  # a generation nobody will read: free its row
        self._resume_writers()

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end_after_current()  # what follows the request is not HTTP/1.1
            self._stop_reading()
        except httptools.HttpParserError as e:
            self._refuse(400, f"invalid HTTP request: {e}")
            self._stop_reading()

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = self.loop.create_future()
            self.paused_since = self.loop.time()
            due = self.paused_since + self.request_timeout_s
            if self.timer is None or self.timer_due > due:
                self._set_timer(due)

    def resume_writing(self) -> None:
        self._resume_writers()

    def _resume_writers(self) -> None:
        waiter, self.write_paused = self.write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the current answer."""
        self._end_after_current()
        if self.current is None and not self.receiving:
            self.transport.close()

    def _end_after_current(self) -> None:
        self.closing = True
        if self.current is not None and not self.current.started:
            self.current.keep_alive = False  # so its answer says `connection: close`

    # --- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving = True
        self.url = b""
        self.headers = []
        self.chunks = []
        self.size = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.refused:
            return
        for name, value in self.headers:
            if name == b"content-length":
                # The parser has already refused malformed or repeated values.
                declared = int(value)
                if declared > self.max_body_bytes:
                    self._refuse(413, body_too_large(self.max_body_bytes, declared).message)
                    return
        if self.expect_continue and self.current is None and not self.waiting:
            self.transport.write(_CONTINUE)
            self.expect_continue = False

    def on_body(self, body: bytes) -> None:
        if self.refused:
            return
        self.size += len(body)
        if self.size > self.max_body_bytes:
            self.chunks = []
            self._refuse(413, body_too_large(self.max_body_bytes).message)
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.receiving = False
        if self.refused:
            return
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        parser = self.parser
        method = parser.get_method().decode("ascii")
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        keep_alive = parser.should_keep_alive()
        answering = None if self.direct is None else self.direct(method, path, self.headers, body)
        if answering is not None:
            exchange = Exchange(self, method, keep_alive, answering)
        else:
            scope = self._scope(method, path, url)
            exchange = Exchange(self, method, keep_alive, None, scope, body)
        if self.current is None and not self.waiting:
            self._start(exchange)
        else:
            self.waiting.append(exchange)
            self._stop_reading()  # one request ahead is enough

    def _scope(self, method: str, path: str, url: Any) -> dict[str, Any]:
        version = self.parser.get_http_version()
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version if version in ("1.0", "1.1") else "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": self.root_path,
            "path": self.root_path + path,
            "raw_path": self.root_path.encode("ascii") + url.path,
            "query_string": url.query or b"",
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    # --- answering, in order ----------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        if self.refused:
            return
        self.refused = True
        refusal = Refusal(status, message)
        if self.current is None and not self.waiting:
            self._send_refusal(refusal)
        else:
            self.waiting.append(refusal)
        self._stop_reading()

    def _send_refusal(self, refusal: Refusal) -> None:
        body = error_body(refusal.message)
        head = head_start(refusal.status, self.server_state)
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.writelines((b"".join(head), body))
        self.transport.close()

    def _start(self, exchange: Exchange) -> None:
        exchange.keep_alive = exchange.keep_alive and not self.closing
        self.current = exchange
        task = exchange.task = self.loop.create_task(self._run(exchange))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, exchange: Exchange) -> None:
        try:
            if exchange.answering is not None:
                reply = await exchange.answering
                if self.write_paused is not None:  # the client is not reading: wait for it
                    await self.write_paused
                if reply.stream is not None:
                    await exchange.stream(reply)
                else:
                    exchange.reply(reply)
            else:
                await self.app(exchange.scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            if exchange.ends_with_client and exchange.disconnected:
                return  # its client left (_lost): nothing is left to answer
            log.error("cancelled while answering a request")
            self._fail(exchange)
            raise
        except BaseException as e:
            log.error("exception while answering a request", exc_info=e)
            self._fail(exchange)
            return
        if not (exchange.complete or exchange.disconnected):
            log.error("the ASGI app returned without completing its response")
            self._fail(exchange)

    def _fail(self, exchange: Exchange) -> None:
        if exchange.complete or exchange.disconnected:
            return
        if exchange.started:  # half a response: all the client can be told is the close
            self.transport.close()
            return
        exchange.complete = True
        exchange.wake()
        self._send_refusal(Refusal(500, "internal error: the server failed to answer"))

    def answered(self, exchange: Exchange) -> None:
        """The app finished its response: close, or go on to the next request."""
        self.server_state.total_requests += 1
        self.current = None
        if not exchange.keep_alive or self.closing:
            self.transport.close()
            return
        if self.waiting:
            following = self.waiting.popleft()
            if isinstance(following, Refusal):
                self._send_refusal(following)
            else:
                self._start(following)
            return
        if self.expect_continue:  # a client held its body until we were free
            self.transport.write(_CONTINUE)
            self.expect_continue = False
        self.idle_since = self.loop.time()
        if not self.reading:
            self.reading = True
            self.transport.resume_reading()
            self.last_read = self.idle_since  # the client waited for us, not we for it
        self.answered_any = True
        due = self.idle_since + self.keep_alive_s
        if self.timer is None or self.timer_due > due:
            self._set_timer(due)

    def _stop_reading(self) -> None:
        if self.reading and not self.transport.is_closing():
            self.reading = False
            self.transport.pause_reading()

    # --- timeouts ---------------------------------------------------------------------------

    def _set_timer(self, due: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_due = due
        self.timer = self.loop.call_at(due, self._check_time)

    def _check_time(self) -> None:
        """Cut off a client that has read nothing of its answer for the request timeout,
        refuse a request that stopped arriving (408), close an idle connection past its
        timeout, or else set the timer again for the deadline that now applies. Otherwise
        a request is being answered and nothing is timed (one behind it may be half read
        only because reading is paused: that silence is ours); `answered` sets the timer
        again."""
        self.timer = None
        now = self.loop.time()
        if self.write_paused is not None:  # also once closing: close() waits for the reader
            due = self.paused_since + self.request_timeout_s
            if now >= due:  # mid-answer: no status can be sent, only the connection cut
                log.info("cut off a client that read nothing for %.0f s", now - self.paused_since)
                self.transport.abort()
                return
            self._set_timer(due)
        elif self.transport.is_closing():
            return
        elif self.receiving and self.reading and not self.refused:
            due = self.last_read + self.request_timeout_s
            if now >= due:
                self._refuse(
                    408,
                    f"the request stopped arriving: nothing was received for "
                    f"{self.request_timeout_s:g} s (--request-timeout-s)",
                )
                return
            self._set_timer(due)
        elif self.current is None and not self.waiting:
            timeout = self.keep_alive_s if self.answered_any else self.request_timeout_s
            due = self.idle_since + timeout
            if now >= due:
                self.transport.close()
                return
            self._set_timer(due)


def http_protocol(
    max_body_bytes: int,
    request_timeout_s: float = 60.0,
    *,
    direct: Direct | None = None,
    on_closed: Callable[[], None] | None = None,
) -> type[BufferedHttpProtocol]:
    """The protocol class for uvicorn's `Config(http=...)`, the one factory of it: refusing
    bodies over `max_body_bytes` (--max-request-bytes) and requests that stop arriving for
    `request_timeout_s` (--request-timeout-s), answering what `direct` takes without the
    ASGI app, and calling `on_closed` as each connection ends (a worker counts its
    connections for the balancer, process/balancer.py)."""

    class Protocol(BufferedHttpProtocol):
        pass

    Protocol.max_body_bytes = max_body_bytes
    Protocol.request_timeout_s = request_timeout_s
    Protocol.direct = staticmethod(direct) if direct is not None else None  # type: ignore[assignment]
    Protocol.on_closed = staticmethod(on_closed) if on_closed is not None else None  # type: ignore[assignment]
    return Protocol
