"""`modelservice serve --workers N`: real worker processes sharing one loopback port.

Workers are found as the supervisor's child processes in /proc and stopped by PID only.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.integration.runtime_server import metric, serve
from tests.waiting import refuses_connections, wait_until

pytestmark = pytest.mark.slow

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # fields after the command name


def workers_of(supervisor: int) -> list[int]:
    """The supervisor's spawned workers (multiprocessing also starts a resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat(int(entry.name))[1]) != supervisor:
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def alive(pid: int) -> bool:
    try:
        return _stat(pid)[0] != "Z"
    except OSError:
        return False


def infer(url: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(url + "/v2/models/mlp/infer", content=orjson.dumps(body), timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_workers_share_the_port_and_metrics_count_the_whole_server(mlp_onnx: Path) -> None:
    with serve(mlp_onnx, "--workers", "2") as served:
        pids = wait_until(
            "2 workers", lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and w
        )
        cpu_before = {pid: cpu_seconds(pid) for pid in pids}
        session = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(3)
        sent = 0
        # Every request on a new connection: the kernel picks a worker per connection.
        for _ in range(600):
            x = rng.standard_normal((1, 64), dtype=np.float32)
            np.testing.assert_allclose(infer(served.url, x), session.run(None, {"input": x})[0],
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
            sent += 1
        used = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in pids}
        # Whichever worker answers the scrape, it reports both workers' requests.
        scrapes = {metric(served.url, "nv_inference_request_success") for _ in range(8)}
    assert scrapes == {sent}, scrapes
    # Both did real work: 600 requests take well over 0.1 s of CPU, split by the kernel.
    assert all(seconds >= 0.05 for seconds in used.values()), used


def _worker_of_each_connection(port: int, pids: list[int]) -> dict[int, int]:
    """Client port -> pid of the worker holding the server end, for established connections
    on `port` (server socket inodes in /proc/net/tcp, found among each pid's fds)."""
    inode_to_client = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inode_to_client[f"socket:[{fields[9]}]"] = remote_port
    holder = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                if (client := inode_to_client.get(os.readlink(fd))) is not None:
                    holder[client] = pid
    return holder


def _open_and_use(port: int, count: int) -> list[socket.socket]:
    """`count` kept-alive connections, each with a full exchange (so each has been accepted
    and handed to a worker)."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for conn in conns:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    for conn in conns:
        assert conn.recv(4096).startswith(b"HTTP/1.1 200"), "liveness on a held connection"
    return conns


def test_connections_are_spread_evenly_over_the_workers(mlp_onnx: Path) -> None:
    """Clients keep their connections, so an uneven split lasts: with each worker on its own
    SO_REUSEPORT socket the kernel's hash split 16 connections 12/4 at times, and the busy
    worker's queue took the MLP's p99 from 2.3-2.6x p50 to 3.8x. The supervisor hands each
    new connection to the worker holding the fewest, so 16 split 8/8; and when one worker's
    8 close, the next 8 all go to it (round-robin would split them 4/4 and leave 12/4)."""
    with serve(mlp_onnx, "--workers", "2") as served:
        pids = workers_of(served.proc.pid)  # ready: both serve
        conns = _open_and_use(served.port, 16)
        try:
            holder = _worker_of_each_connection(served.port, pids)
            ports = {c.getsockname()[1]: c for c in conns}
            assert set(holder) == set(ports), (holder, list(ports))
            per_worker = collections.Counter(holder.values())
            assert sorted(per_worker.values()) == [8, 8], per_worker

            emptied = pids[0]
            for port, pid in holder.items():
                if pid == emptied:
                    ports.pop(port).close()
            wait_until(
                "the worker to close its 8 connections",
                lambda: emptied not in _worker_of_each_connection(served.port, pids).values(),
            )
            # And to count them: its loop's close callbacks run just after the fds close
            # (uvloop), and the count lives in shared memory only the supervisor reads, so
            # no signal shows it from here: a pause, not a wait.
            time.sleep(0.5)
            conns = list(ports.values()) + _open_and_use(served.port, 8)
            per_worker = collections.Counter(_worker_of_each_connection(served.port, pids).values())
            assert per_worker == {pids[0]: 8, pids[1]: 8}, per_worker
        finally:
            for conn in conns:
                conn.close()


def test_a_killed_worker_is_replaced_without_losing_counts(mlp_onnx: Path) -> None:
    with serve(mlp_onnx, "--workers", "2") as served:
        pids = wait_until(
            "2 workers", lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and w
        )
        x = np.zeros((1, 64), np.float32)
        for _ in range(50):
            infer(served.url, x)
        os.kill(pids[0], signal.SIGKILL)  # a crash (OOM kill, segfault) of one worker
        replaced = wait_until(
            "a replacement worker",
            lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and pids[0] not in w and w,
        )
        assert pids[1] in replaced
        # The server answered throughout: the surviving worker takes new connections.
        for _ in range(50):
            infer(served.url, x)
        # The dead worker's 50-odd requests stay counted (its shared region survives it).
        assert metric(served.url, "nv_inference_request_success") == 100
        assert served.proc.poll() is None
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0
        wait_until("workers to exit", lambda: not any(alive(p) for p in replaced), timeout=10)


def test_a_worker_with_a_stuck_event_loop_gets_no_connections_and_is_replaced(
    mlp_onnx: Path,
) -> None:
    """A liveness probe reaches whichever worker its connection lands on, so it would
    miss one stuck worker; the supervisor watches each worker's heartbeat instead. New
    connections avoid the stuck worker once its heartbeat is stale, before it is killed.
    --worker-timeout-s leaves the 20 requests 11 s between stale (3 s) and killed (15 s);
    they need well under one here, and the test checks the worker was still there after."""
    from modelservice_runtime.process.balancer import STALE_HEARTBEAT_S

    timeout_s = 15
    with serve(mlp_onnx, "--workers", "2", "--worker-timeout-s", str(timeout_s)) as served:
        pids = wait_until(
            "2 workers", lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and w
        )
        time.sleep(timeout_s + 0.5)  # serving and beating for longer: nobody is killed
        assert workers_of(served.proc.pid) == pids
        os.kill(pids[0], signal.SIGSTOP)  # stuck as a deadlocked event loop would be
        x = np.zeros((1, 64), np.float32)
        try:
            # Not a race: its last beat was before the SIGSTOP, so after this it is stale by
            # the balancer's own rule (monotonic clock, STALE_HEARTBEAT_S).
            time.sleep(STALE_HEARTBEAT_S + 0.5)
            for _ in range(20):  # new connections: every one reaches the live worker
                infer(served.url, x)
            # Still there and still stopped: the 20 answers came while it was stuck.
            assert pids[0] in workers_of(served.proc.pid), "killed before the check ran"
            assert _stat(pids[0])[0] == "T", _stat(pids[0])[0]
            replaced = wait_until(
                "the stuck worker to be replaced",
                lambda: (
                    (w := workers_of(served.proc.pid)) and len(w) == 2 and pids[0] not in w and w
                ),
                timeout=30,
            )
        finally:
            if alive(pids[0]):  # not replaced: a stopped process ignores SIGTERM, never leak it
                os.kill(pids[0], signal.SIGKILL)
        assert pids[1] in replaced
        assert not alive(pids[0])
        for _ in range(20):  # new connections, spread over both workers again
            infer(served.url, x)
        assert "event loop silent" in served.log_tail()


def test_killing_the_supervisor_takes_its_workers_down(mlp_onnx: Path) -> None:
    with serve(mlp_onnx, "--workers", "2") as served:
        pids = wait_until(
            "2 workers", lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and w
        )
        served.proc.kill()  # SIGKILL: no chance to forward anything
        served.proc.wait(timeout=10)
        # PR_SET_PDEATHSIG: the kernel SIGTERMs each orphaned worker, which then drains.
        wait_until("orphaned workers to exit", lambda: not any(alive(p) for p in pids), timeout=20)
        with pytest.raises(httpx.ConnectError):
            httpx.get(served.url + "/v2/health/live", timeout=2)


def test_a_model_that_cannot_load_stops_every_worker(tmp_path: Path) -> None:
    from tests.integration.test_faults_runtime import run_failing_serve

    bad = tmp_path / "bad.onnx"
    # Binary, starting like ONNX's protobuf: past serve's preflight (which refuses text
    # before any worker starts), so the workers are the ones that fail to load it.
    bad.write_bytes(b"\x08\x07\x12\x00not a model\xff\xfe")
    started = time.monotonic()
    code, out, ready = run_failing_serve(str(bad), "--workers", "2")
    assert code == 1 and ready == 0, out
    assert "cannot start" in out and "bad.onnx" in out, out
    assert time.monotonic() - started < 60  # no restart loop


def test_sigterm_drains_every_worker_and_exits_zero(mlp_onnx: Path) -> None:
    with serve(mlp_onnx, "--workers", "2") as served:
        pids = wait_until(
            "2 workers", lambda: (w := workers_of(served.proc.pid)) and len(w) == 2 and w
        )
        served.proc.send_signal(signal.SIGTERM)
        try:
            assert served.proc.wait(timeout=30) == 0, served.log_tail()
        except subprocess.TimeoutExpired:
            pytest.fail(served.log_tail())
        assert not any(alive(p) for p in pids)


def test_once_every_worker_drains_the_port_refuses_while_in_flight_requests_finish(
    mlp_onnx: Path,
) -> None:
    """After the shutdown delay the workers stop taking connections but finish the requests
    they have. New connections must then be refused (a client retries a refused connect
    safely) rather than accepted by the supervisor and closed with no answer."""
    with serve(mlp_onnx, "--workers", "2", "--shutdown-delay-s", "0.3") as served:
        x = np.arange(64, dtype=np.float32).reshape(1, 64)
        body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                         "data": x.ravel().tolist()}]})  # fmt: skip
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as held:
            held.sendall(
                b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            # The worker has parsed the head once it asks for the body: from then on the
            # connection holds a request in flight (before, it would count as idle).
            assert held.recv(len(CONTINUE)) == CONTINUE
            held.sendall(body[:100])  # its body not all sent yet
            served.proc.send_signal(signal.SIGTERM)

            wait_until(
                "the port to refuse new connections",
                lambda: refuses_connections(served.port),
                timeout=15,
                interval=0.05,
            )
            assert served.proc.poll() is None, "exited without finishing the held request"
            held.sendall(body[100:])
            answer = held.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b"connection: close" in answer.lower()
        assert served.proc.wait(timeout=30) == 0, served.log_tail()
