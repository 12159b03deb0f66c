"""Spread the connections of a multi-worker server evenly over its workers.

The supervisor owns the one listening socket. It accepts each connection and hands it to
the serving worker that holds the fewest open connections, over a Unix socket pair per
worker (SCM_RIGHTS); the worker serves it as if it had accepted it itself. Node's cluster
module does the same (round-robin there).

Why not let the kernel spread them (SO_REUSEPORT, one listening socket per worker): it
hashes each connection to a worker at random, and clients keep their connections, so 16
connections from a load balancer or a client pool split 7/9, 6/10 or 12/4 for good. The
busy worker then queues while the other idles: measured on 2 cores with the MLP, p99 was
2.3-2.6x p50 at an 8/8 split and 3.8x at 12/4. A shared listening socket is worse: whichever
worker wakes first accepts the whole burst (KServe's two workers got 16 of 16).

Counting: the supervisor counts what it sent to each worker; each worker counts, in shared
memory, the connections it has closed. Open = sent - closed, exact even in a burst of new
connections. A worker takes connections once its event loop has beaten (workers.py) and
stops when its heartbeat goes stale (a stuck loop) or it closes its end (draining).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("modelservice.balancer")

# A worker whose last heartbeat is older than this gets no new connections.
STALE_HEARTBEAT_S = 3.0
POLL_S = 0.05  # how soon the accepting thread notices a worker start serving, or stop()
ACCEPT_BURST = 64  # connections accepted before the thread looks at its workers again
SEND_TIMEOUT_S = 1.0  # a worker that cannot take a handed-over socket this fast is skipped


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free port), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Balancer:
    """Supervisor side: accepts on `listener` and hands each connection to a worker.

    `beats[i]` is worker i's last heartbeat (time.monotonic(); 0: not serving) and
    `closed[i]` the number of handed-over connections it has closed; both live in shared
    memory written by the workers.
    """

    def __init__(self, listener: socket.socket, beats: Sequence[float], closed: Any) -> None:
        self._listener = listener
        self._beats = beats
        self._closed = closed
        count = len(closed)
        self._channels: list[socket.socket | None] = [None] * count
        self._sent = [0] * count
        self._next = 0  # where ties start, so equal workers take turns
        self._retired: list[socket.socket] = []  # replaced channels, for the thread to close
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._draining = threading.Event()
        self.listening = threading.Event()  # set once the port listens

    # --- called by the supervisor -------------------------------------------------------

    def attach(self, index: int) -> socket.socket:
        """A fresh channel for a (re)started worker i; returns the worker's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(SEND_TIMEOUT_S)
        with self._lock:
            old, self._channels[index] = self._channels[index], ours
            self._sent[index] = 0
            self._closed[index] = 0  # the old worker is gone: nothing else writes it now
            if old is not None:  # the accepting thread may be waiting on it: it closes it
                self._retired.append(old)
        return theirs

    def start(
        self, listen_when: Callable[[], bool], backlog: int, on_crash: Callable[[], None]
    ) -> None:
        """Accept connections in a thread, listening once `listen_when()` is true.
        `on_crash` is called if the thread fails: a server that cannot accept must exit
        (and be restarted) rather than look alive."""

        def run() -> None:
            try:
                self._run(listen_when, backlog)
            except BaseException:
                log.exception("the connection balancer failed; stopping the server")
                on_crash()

        self._thread = threading.Thread(target=run, name="balancer", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """The server is stopping: once no worker takes connections any more, close the
        port (workers keep taking them through their --shutdown-delay-s)."""
        self._draining.set()

    def stop(self) -> None:
        """Stop accepting (the listening socket closes); idempotent."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for channel in [*self._channels, *self._retired]:
                if channel is not None:
                    channel.close()
            self._channels = [None] * len(self._channels)
            self._retired.clear()

    def open_connections(self, index: int) -> int:
        return self._sent[index] - self._closed[index]

    # --- the accepting thread -----------------------------------------------------------

    def _serving(self) -> list[int]:
        now = time.monotonic()
        return [
            i
            for i, channel in enumerate(self._channels)
            if channel is not None and self._beats[i] and now - self._beats[i] < STALE_HEARTBEAT_S
        ]

    def _run(self, listen_when: Callable[[], bool], backlog: int) -> None:
        while not listen_when():
            if self._stopped.wait(POLL_S):
                return
        self._listener.listen(backlog)
        self._listener.setblocking(False)
        self.listening.set()
        while not self._stopped.is_set():
            with self._lock:
                for old in self._retired:
                    old.close()
                self._retired.clear()
                channels = {c: i for i, c in enumerate(self._channels) if c is not None}
            if self._draining.is_set() and not channels:
                # Every worker has stopped taking connections: refuse new ones at once
                # (a client can retry a refused connect safely, not a request cut off).
                self._listener.close()
                return
            watched: list[socket.socket] = list(channels)
            if self._serving():  # else connections wait in the backlog (workers restarting)
                watched.append(self._listener)
            readable, _, _ = select.select(watched, [], [], POLL_S)
            for sock in readable:
                if sock is self._listener:
                    self._accept_waiting()
                else:
                    self._detach_if_closed(channels[sock], sock)

    def _accept_waiting(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("accepting a connection failed")
                self._stopped.wait(POLL_S)  # EMFILE and the like: do not spin
                return
            with conn:
                with contextlib.suppress(OSError):  # the client may be gone already
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand_over(conn)

    def _detach_if_closed(self, index: int, channel: socket.socket) -> None:
        """A worker's end is readable only when it has closed it (draining) or died."""
        try:
            closed = channel.recv(1) == b""
        except OSError:
            closed = True
        if closed:
            with self._lock:
                self._forget(index, channel)

    def _forget(self, index: int, channel: socket.socket) -> None:
        """Close a worker's channel that it has closed or cannot take (lock held)."""
        if self._channels[index] is channel:  # not replaced by a restart meanwhile
            self._channels[index] = None
        channel.close()

    def _hand_over(self, conn: socket.socket) -> None:
        """Give `conn` to the least loaded serving worker; our copy is closed by the caller.
        If every worker refuses (all draining), the client sees the connection close."""
        with self._lock:
            count = len(self._channels)
            order = sorted(
                self._serving(),
                key=lambda i: (self.open_connections(i), (i - self._next) % count),
            )
            for index in order:
                channel = self._channels[index]
                assert channel is not None
                try:
                    socket.send_fds(channel, [b"c"], [conn.fileno()])
                except TimeoutError:  # its queue is full: busy or stuck; it keeps its channel
                    continue
                except OSError:  # the worker closed its end (draining) or died
                    self._forget(index, channel)
                    continue
                self._sent[index] += 1
                self._next = index + 1
                return


class HandedOverConnections:
    """Worker side: serve every connection the supervisor sends on `channel`.

    `start(factory)` is given what makes the HTTP protocol for each connection; `on_closed`
    must be called once per connection when it closes (the protocol does it: the server
    passes it to `http_protocol()`), so that the supervisor's count of this worker's open
    connections stays exact.
    """

    def __init__(self, channel: socket.socket, on_closed: Callable[[], None]) -> None:
        channel.setblocking(False)
        self._channel = channel
        self.on_closed = on_closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        self._loop.add_reader(self._channel.fileno(), self._receive)

    def stop(self) -> None:
        """Take no more connections: the supervisor sees our end close and skips us."""
        if self._loop is not None and self._channel.fileno() >= 0:
            self._loop.remove_reader(self._channel.fileno())
        self._channel.close()

    def _receive(self) -> None:
        assert self._loop is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._channel, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # A worker that cannot get connections is of no use: drain and exit, and
                # the supervisor starts a new one.
                log.error("receiving connections from the supervisor failed: %s; exiting", e)
                self.stop()
                signal.raise_signal(signal.SIGTERM)
                return
            if not data and not fds:  # the supervisor closed its end: it is stopping
                self.stop()
                return
            for fd in fds:
                task = self._loop.create_task(self._serve(socket.socket(fileno=fd)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        assert self._loop is not None and self._factory is not None
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as e:  # the client left already, or the loop is closing
            log.debug("a handed-over connection could not be served: %s", e)
            with contextlib.suppress(OSError):
                conn.close()
            self.on_closed()  # its protocol never started, so it never counts itself
