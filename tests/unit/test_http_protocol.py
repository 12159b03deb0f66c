"""BufferedHttpProtocol under a real uvicorn server on 127.0.0.1, driven by plain sockets so
each test controls exactly what is sent (pieces, pipelining, malformed bytes) and sees
exactly what comes back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, BinaryIO

import orjson
import pytest
import uvicorn
from modelservice_runtime.serving.reply import Reply
from modelservice_runtime.transport.coalesced_writes import CoalescedWrites
from modelservice_runtime.transport.http_exchange import EndsWithClient
from modelservice_runtime.transport.http_protocol import http_protocol

from tests.waiting import wait_until

# A coroutine left unawaited (a pipelined answer never given) must fail the test.
pytestmark = [
    pytest.mark.filterwarnings("error::RuntimeWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

LIMIT = 1000
KEEP_ALIVE_S = 1
REQUEST_TIMEOUT_S = 1.5
BIG = 64 * 1024 * 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI side: reports what it received, or shows off one kind of response."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("the app failed")
    if path == "/bad-header":  # a value that would split the response
        headers = [(b"x-injected", b"a\r\nset-cookie: b"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":  # far more than the socket buffers hold
        headers = [(b"content-length", b"%d" % BIG)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"b" * BIG})
        return
    if path == "/stream":  # no Content-Length: sent chunked
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
        return
    messages = []
    while True:
        message = await receive()
        messages.append({k: len(v) if k == "body" else v for k, v in message.items()})
        if not message.get("more_body"):
            break
    if path == "/slow":
        await asyncio.sleep(0.3)
    body = orjson.dumps({"app": path, "method": scope["method"], "messages": messages})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def answer_directly(path: str, body: bytes) -> Reply:
    await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
    return Reply(200, "application/json", orjson.dumps({"direct": path, "length": len(body)}))


ENDED: list[str] = []  # what the streamed and client-bound answers saw of their end


async def parts(n: int, gap_s: float) -> AsyncIterator[bytes]:
    try:
        for i in range(n):
            await asyncio.sleep(gap_s)
            yield b"part%d," % i
    finally:
        ENDED.append("stream closed")


async def answer_streaming(path: str) -> Reply:
    """POST /stream/<n>/<ms>: n parts, <ms> apart, as a stream (server-sent events)."""
    n, gap_ms = (int(x) for x in path.split("/")[2:4])
    return Reply(
        200, "text/event-stream", b"", {"Cache-Control": "no-cache"}, parts(n, gap_ms / 1e3)
    )


async def answer_never() -> Reply:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        ENDED.append("answer cancelled")
        raise
    return Reply(200, "application/json", b"{}")


def direct(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> Awaitable[Reply] | None:
    """POST /direct/<ms>: answered after <ms> without the app; POST /stream/<n>/<ms> and
    /never: answers that end with their client; anything else goes to the app."""
    if method == "POST" and path.startswith("/direct/"):
        return answer_directly(path, body)
    if method == "POST" and path.startswith("/stream/"):
        return EndsWithClient(answer_streaming(path))
    if method == "POST" and path == "/never":
        return EndsWithClient(answer_never())
    return None


class Served:
    def __init__(self) -> None:
        config = uvicorn.Config(
            app,
            loop="uvloop",
            http=http_protocol(LIMIT, REQUEST_TIMEOUT_S, direct=direct),
            timeout_keep_alive=KEEP_ALIVE_S,
            log_level="critical",
        )
        self.server = uvicorn.Server(config)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Served:
        self.thread.start()
        wait_until("uvicorn to start", lambda: self.server.started, timeout=10, interval=0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def connect(self) -> Client:
        return Client(socket.create_connection(("127.0.0.1", self.port), timeout=5))


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file: BinaryIO = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> Response:
        """The next response on the connection: Content-Length or chunked framing."""
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        status = int(status_line.split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (100, 204, 304):
            body = b""
        elif "content-length" in headers:
            body = self.file.read(int(headers["content-length"]))
        else:
            assert headers.get("transfer-encoding") == "chunked", headers
            body = b""
            while size := int(self.file.readline(), 16):
                body += self.file.read(size)
                assert self.file.readline() == b"\r\n"
            assert self.file.readline() == b"\r\n"
        return Response(status, headers, body)

    def closed_by_server(self, within_s: float = KEEP_ALIVE_S / 2) -> bool:
        """True if the server closes the connection within `within_s` (sooner than the
        keep-alive timeout would)."""
        self.sock.settimeout(within_s)
        try:
            return self.file.read(1) == b""
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served() as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    c = served.connect()
    yield c
    c.close()


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % (path.encode(), len(body))
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


def test_the_app_gets_the_whole_body_in_one_receive_however_it_arrives(client: Client) -> None:
    request = post("/asgi", b"x" * 900)
    for cut in (60, 300, 700):  # headers split, then the body in pieces
        client.send(request[:cut])
        request = request[cut:]
        time.sleep(0.05)
    client.send(request)
    assert client.response().json()["messages"] == [
        {"type": "http.request", "body": 900, "more_body": False}
    ]
    chunked = b"POST /asgi HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    client.send(chunked + b"5\r\nhello\r\n")
    time.sleep(0.05)
    client.send(b"6\r\n world\r\n0\r\n\r\n")
    assert client.response().json()["messages"] == [
        {"type": "http.request", "body": 11, "more_body": False}
    ]


def test_the_protocol_writes_through_the_coalescing_transport(
    served: Served, client: Client
) -> None:
    client.send(post("/direct/0", b"x"))
    assert client.response().status == 200  # the connection is made and served
    seen = [conn.transport for conn in served.server.server_state.connections]
    assert len(seen) == 1 and isinstance(seen[0], CoalescedWrites)
    assert seen[0].get_extra_info("peername")[0] == "127.0.0.1"


def test_direct_routes_answer_without_the_app_on_a_kept_alive_connection(client: Client) -> None:
    for _ in range(3):
        client.send(post("/direct/0", b"abc"))
        r = client.response()
        assert r.status == 200 and r.json() == {"direct": "/direct/0", "length": 3}
        assert r.headers["content-type"] == "application/json"
        assert "connection" not in r.headers


def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    """A slow direct answer first, then a fast app answer and a fast direct one: all
    three in the order asked, none lost or interleaved."""
    client.send(
        post("/direct/200", b"1")
        + b"GET /asgi HTTP/1.1\r\nHost: t\r\n\r\n"
        + post("/direct/0", b"22")
        + post("/asgi", b"333")
    )
    assert client.response().json() == {"direct": "/direct/200", "length": 1}
    assert client.response().json()["method"] == "GET"
    assert client.response().json() == {"direct": "/direct/0", "length": 2}
    assert client.response().json()["messages"][0]["body"] == 3


def test_a_direct_stream_is_sent_chunked_part_by_part_and_the_connection_goes_on(
    client: Client,
) -> None:
    client.send(post("/stream/3/1", b""))
    r = client.response("POST")
    assert r.status == 200 and r.body == b"part0,part1,part2,"
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    client.send(post("/direct/0", b"x"))  # the same connection, the next request
    assert client.response().json() == {"direct": "/direct/0", "length": 1}


def wait_for(what: str) -> None:
    wait_until(repr(what), lambda: what in ENDED, timeout=5, interval=0.01)


def test_a_client_leaving_ends_its_stream_and_its_unsent_answer(served: Served) -> None:
    """A generation whose client leaves must stop using its batch row: mid-stream, the
    stream is closed (not run to its end); before the answer, the answer is cancelled."""
    ENDED.clear()
    c = served.connect()
    c.send(post("/stream/100000/10", b""))  # about 17 minutes of parts
    assert c.file.readline().startswith(b"HTTP/1.1 200")
    c.close()
    wait_for("stream closed")
    c = served.connect()
    c.send(post("/never", b""))
    time.sleep(0.1)  # the answer is being made
    c.close()
    wait_for("answer cancelled")
    c = served.connect()  # and the server goes on
    c.send(post("/direct/0", b"x"))
    assert c.response().status == 200
    c.close()


def test_a_declared_body_over_the_limit_is_413_at_once_and_the_connection_closes(
    client: Client,
) -> None:
    client.send(b"POST /asgi HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\nxx")
    r = client.response()
    assert r.status == 413 and r.headers["connection"] == "close"
    assert r.json() == {
        "error": f"request body is 1000000000 bytes; the limit is {LIMIT} bytes "
        "(--max-request-bytes)"
    }
    assert client.closed_by_server()


def test_a_chunked_body_over_the_limit_is_413(client: Client) -> None:
    client.send(b"POST /direct/0 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        client.send(b"190\r\n" + b"y" * 400 + b"\r\n")  # 1200 bytes in all
    r = client.response()
    assert r.status == 413 and "--max-request-bytes" in r.json()["error"]
    assert client.closed_by_server()


def test_a_body_at_the_limit_is_served(client: Client) -> None:
    client.send(post("/direct/0", b"z" * LIMIT))
    assert client.response().json()["length"] == LIMIT


def test_a_malformed_request_gets_400_in_its_turn_and_ends_the_connection(
    client: Client,
) -> None:
    client.send(post("/direct/100", b"ok") + b"NOT HTTP AT ALL\r\n\r\n")
    first = client.response()
    assert first.status == 200 and first.json()["length"] == 2
    refused = client.response()
    assert refused.status == 400 and refused.headers["connection"] == "close"
    assert refused.json()["error"].startswith("invalid HTTP request: ")
    assert client.closed_by_server()


def test_expect_100_continue_is_answered_before_the_body_is_sent(client: Client) -> None:
    client.send(post("/asgi", b"", b"Expect: 100-continue").replace(b"Length: 0", b"Length: 4"))
    assert client.response().status == 100
    client.send(b"body")
    assert client.response().json()["messages"][0]["body"] == 4


def test_head_has_no_body_and_a_response_without_length_is_chunked(client: Client) -> None:
    client.send(b"HEAD /asgi HTTP/1.1\r\nHost: t\r\n\r\n")
    r = client.response("HEAD")
    assert r.status == 200 and int(r.headers["content-length"]) > 0
    client.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    r = client.response()
    assert r.headers["transfer-encoding"] == "chunked" and r.body == b"one,two"


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(
    served: Served,
) -> None:
    for request in (
        b"GET /asgi HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /asgi HTTP/1.0\r\n\r\n",
        post("/direct/0", b"q", b"Connection: close"),
    ):
        client = served.connect()
        client.send(request)
        r = client.response()
        assert r.status == 200 and r.headers["connection"] == "close"
        assert client.closed_by_server()
        client.close()


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(client: Client) -> None:
    client.send(b"GET /asgi HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.response().status == 200
    started = time.monotonic()
    assert client.closed_by_server(within_s=KEEP_ALIVE_S + 3)
    assert time.monotonic() - started > KEEP_ALIVE_S * 0.8


def test_the_keep_alive_timeout_counts_from_the_last_answer(client: Client) -> None:
    """Requests spread over longer than the keep-alive timeout, each sent well within it
    of the answer before: the connection stays open throughout."""
    started = time.monotonic()
    while time.monotonic() - started < KEEP_ALIVE_S * 2.5:
        client.send(post("/direct/0", b"x"))
        assert client.response().status == 200
        time.sleep(KEEP_ALIVE_S / 4)
    client.send(post("/direct/300", b"slow"))  # answered after a while, then idle again
    assert client.response().status == 200
    started = time.monotonic()
    assert client.closed_by_server(within_s=KEEP_ALIVE_S + 3)
    assert time.monotonic() - started > KEEP_ALIVE_S * 0.8


@pytest.mark.parametrize(
    "sent",
    [b"POST /asgi HTTP/1.1\r\nHost: t\r\nContent-Le", post("/direct/0", b"12345678")[:-4]],
    ids=["headers-half-sent", "body-half-sent"],
)
def test_a_request_that_stops_arriving_gets_408_and_the_connection_closes(
    served: Served, client: Client, sent: bytes
) -> None:
    client.send(sent)
    started = time.monotonic()
    r = client.response()
    waited = time.monotonic() - started
    assert REQUEST_TIMEOUT_S * 0.8 < waited < REQUEST_TIMEOUT_S + 3
    assert r.status == 408 and r.headers["connection"] == "close"
    assert r.json() == {
        "error": f"the request stopped arriving: nothing was received for {REQUEST_TIMEOUT_S:g} s "
        "(--request-timeout-s)"
    }
    assert client.closed_by_server()
    other = served.connect()  # the server carries on
    other.send(post("/direct/0", b"ok"))
    assert other.response().json()["length"] == 2
    other.close()


def test_a_request_half_read_behind_a_slow_answer_is_not_timed_out(client: Client) -> None:
    """Reading pauses while a pipelined request waits for a slow answer, leaving the one
    after it half read for longer than the timeout: that silence is the server's, so the
    request is answered, not refused."""
    slow_ms = int(REQUEST_TIMEOUT_S * 1000 + 800)
    third = post("/direct/0", b"three")
    client.send(post(f"/direct/{slow_ms}", b"1") + post("/direct/0", b"22") + third[:20])
    time.sleep(0.1)
    client.send(third[20:])
    assert [client.response().json()["length"] for _ in range(3)] == [1, 2, 5]


@pytest.mark.parametrize("connection", [b"keep-alive", b"close"])
def test_a_client_that_reads_nothing_of_its_answer_is_cut_off(
    served: Served, client: Client, connection: bytes
) -> None:
    """A big answer the client never reads stays in the server's buffers until the
    connection is cut, after the request timeout (also when the connection was to close
    after the answer: closing waits for the reader); a client that reads gets all of it."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.send(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: %b\r\n\r\n" % connection)
    time.sleep(REQUEST_TIMEOUT_S + 1.5)
    got = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.sock.recv(1 << 20):
            got += len(chunk)
    assert 0 < got < BIG
    reader = served.connect()
    reader.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    assert len(reader.response().body) == BIG
    reader.close()


def test_a_slow_but_steady_request_is_not_timed_out(client: Client) -> None:
    """The timeout is for silence, not for the whole request: a body trickling in over
    longer than the timeout, a piece every so often, is served."""
    request = post("/direct/0", b"s" * 40)
    started = time.monotonic()
    for i in range(0, len(request), 10):
        client.send(request[i : i + 10])
        time.sleep(REQUEST_TIMEOUT_S / 4)
    assert time.monotonic() - started > REQUEST_TIMEOUT_S * 1.5
    assert client.response().json()["length"] == 40


def test_a_connection_that_never_sends_is_closed_after_the_request_timeout(
    served: Served,
) -> None:
    silent = served.connect()
    started = time.monotonic()
    assert silent.closed_by_server(within_s=REQUEST_TIMEOUT_S + 3)
    assert time.monotonic() - started > REQUEST_TIMEOUT_S * 0.8
    silent.close()


@pytest.mark.parametrize("path", ["/boom", "/bad-header"])
def test_an_app_error_is_a_json_500_and_the_server_goes_on(
    served: Served, client: Client, path: str
) -> None:
    client.send(b"GET %b HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    r = client.response()
    assert r.status == 500 and set(r.json()) == {"error"}
    assert r.headers["connection"] == "close" and "set-cookie" not in r.headers
    other = served.connect()
    other.send(post("/direct/0", b""))
    assert other.response().status == 200
    other.close()


def test_a_client_that_leaves_mid_answer_does_not_disturb_the_others(served: Served) -> None:
    leaving = served.connect()
    leaving.send(
        post("/direct/200", b"bye")
        + b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
        + post("/direct/0", b"never answered")
    )
    leaving.close()
    staying = served.connect()
    staying.send(post("/direct/300", b"hi"))
    assert staying.response().json()["length"] == 2
    staying.close()


def test_graceful_shutdown_closes_idle_connections_and_finishes_the_busy_ones() -> None:
    with Served() as served:
        idle = served.connect()
        idle.send(post("/direct/0", b""))
        assert idle.response().status == 200
        busy = served.connect()
        busy.send(post("/direct/500", b"late"))
        arriving = served.connect()
        arriving.send(post("/direct/0", b"12345678")[:-4])  # body half sent
        time.sleep(0.1)
        served.server.should_exit = True
        assert idle.closed_by_server()
        r = busy.response()
        assert r.status == 200 and r.json()["length"] == 4
        assert r.headers["connection"] == "close"
        arriving.send(b"5678")
        r = arriving.response()
        assert r.status == 200 and r.json()["length"] == 8
        assert r.headers["connection"] == "close"
        for c in (idle, busy, arriving):
            c.close()
