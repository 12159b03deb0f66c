"""The supervisor's connection balancer, in one process: real loopback TCP connections and
real socket pairs; the "workers" are this test reading their ends of the channels."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from modelservice_runtime.process.balancer import STALE_HEARTBEAT_S, Balancer, listening_socket

from tests.waiting import refuses_connections, wait_until


class Rig:
    def __init__(self, workers: int) -> None:
        self.listener = listening_socket("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.beats = [time.monotonic()] * workers
        self.closed = [0] * workers
        self.balancer = Balancer(self.listener, self.beats, self.closed)
        self.ends = [self.balancer.attach(i) for i in range(workers)]
        for end in self.ends:
            end.settimeout(5)
        self.clients: list[socket.socket] = []
        self.crashed = False

    def start(self) -> None:
        self.balancer.start(lambda: True, 128, on_crash=self._crash)
        assert self.balancer.listening.wait(5), "the port never listened"

    def _crash(self) -> None:
        self.crashed = True

    def connect(self, count: int) -> list[int]:
        """Open `count` connections; return which worker got each, in order."""
        got = []
        for _ in range(count):
            self.clients.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
            got.append(self._receiver())
        return got

    def _receiver(self) -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for index, end in enumerate(self.ends):
                if end.fileno() < 0:
                    continue  # that worker is gone
                end.setblocking(False)
                try:
                    _, fds, _, _ = socket.recv_fds(end, 1, 1)
                except BlockingIOError:
                    continue
                finally:
                    end.settimeout(5)
                for fd in fds:
                    socket.socket(fileno=fd).close()  # served and closed at once
                return index
            time.sleep(0.005)
        pytest.fail("no worker received the connection within 5 s")


MakeRig = Callable[[int], Rig]


@pytest.fixture
def rig() -> Iterator[MakeRig]:
    made: list[Rig] = []

    def make(workers: int) -> Rig:
        made.append(r := Rig(workers))
        return r

    yield make
    for r in made:
        r.balancer.stop()
        for c in [*r.clients, *r.ends]:
            c.close()
        assert not r.crashed


def test_each_connection_goes_to_the_worker_holding_fewest(rig: MakeRig) -> None:
    r = rig(3)
    r.start()
    assert sorted(r.connect(6)) == [0, 0, 1, 1, 2, 2]
    r.closed[1] = 2  # worker 1's two connections ended
    assert r.connect(2) == [1, 1]


def test_a_stale_or_not_yet_serving_worker_gets_nothing(rig: MakeRig) -> None:
    r = rig(3)
    r.beats[0] = 0.0  # still loading
    r.beats[2] = time.monotonic() - STALE_HEARTBEAT_S - 1  # loop stuck
    r.start()
    assert r.connect(4) == [1, 1, 1, 1]


def test_a_restarted_worker_gets_a_fresh_channel_and_count(rig: MakeRig) -> None:
    r = rig(2)
    r.start()
    assert sorted(r.connect(4)) == [0, 0, 1, 1]
    r.ends[0].close()  # worker 0 died...
    r.ends[0] = r.balancer.attach(0)  # ...and its replacement starts while the thread runs
    r.ends[0].settimeout(5)
    assert r.connect(2) == [0, 0]  # it holds none: both go to it


def test_draining_closes_the_port_once_every_worker_has_closed_its_end(rig: MakeRig) -> None:
    r = rig(2)
    r.start()
    r.connect(2)
    r.balancer.drain()
    r.ends[0].close()
    assert r.connect(1) == [1]  # still taking connections through its shutdown delay
    r.ends[1].close()
    # A probe may be caught in the backlog as the listener closes (reset): it probes again.
    wait_until(
        "the port to refuse once every worker left",
        lambda: refuses_connections(r.port),
        timeout=5,
        interval=0.01,
    )
