"""`modelservice serve --workers N`: N server processes behind one port.

One server process is held to about one core by the GIL however many cores the pod has;
N workers use N. Each worker is a whole server (event loop, batcher, onnxruntime session)
in its own process. The supervisor (the process `modelservice serve` started as) holds no
model: it owns the listening socket and hands each connection to the worker holding the
fewest (balancer.py), starts the workers, forwards SIGTERM/SIGINT to them (each then drains
as server.py describes), restarts a worker that dies, and exits once they have all stopped.

The port starts listening once every worker has loaded its model and is serving (with one
worker the server is live at once and ready later; with several, nothing answers until they
are all ready), so the first connections spread over all of them. A restarted worker takes
connections as soon as it serves again. Each worker's event loop writes a heartbeat to
shared memory every second; a worker silent for --worker-timeout-s (a stuck loop: a
deadlock, a runaway request) gets no new connections, is killed and is restarted like a
crashed one, because a liveness probe, answered by whichever worker its connection
reaches, would not notice. Metrics live in shared memory (metrics.py), so /metrics on any
worker reports the whole server.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from modelservice_cli.serve_flags import auto_workers
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.process import preflight, server
from modelservice_runtime.process.balancer import Balancer, HandedOverConnections, listening_socket
from modelservice_runtime.providers import GPU_PROVIDERS
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.workers")

CANNOT_START = 3  # a worker's exit code when restarting it cannot help (its model)
RESTARTS_ALLOWED = 5  # crashes tolerated per RESTART_WINDOW_S before the server gives up
RESTART_WINDOW_S = 60.0
# How long the port waits for every worker to serve before it listens with those that do.
START_TOGETHER_TIMEOUT_S = 120.0
LISTEN_BACKLOG = 2048  # uvicorn's default
_PR_SET_PDEATHSIG = 1


def worker_count(settings: Settings) -> int:
    """--workers, with 0 resolved by serve_flags.auto_workers: one per available CPU, but
    one on a GPU."""
    if settings.workers > 0:
        return settings.workers
    return auto_workers(available_cpus(), gpu=_on_gpu(settings.execution_provider))


def _on_gpu(execution_provider: str) -> bool:
    if execution_provider == "auto":
        import onnxruntime

        return bool(set(GPU_PROVIDERS) & set(onnxruntime.get_available_providers()))
    return execution_provider in ("cuda", "tensorrt")


def _exit_with(parent_pid: int) -> None:
    """Get SIGTERM (and so drain) if the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    settings: Settings,
    index: int,
    workers: int,
    cells: Any,
    beats: Any,
    closed: Any,
    channel: socket.socket,
    parent: int,
) -> None:
    """One worker process (spawned): load, then serve the connections handed over on
    `channel` until stopped."""
    _exit_with(parent)
    from modelservice_runtime.serving.dataplane import load_model
    from modelservice_runtime.serving.metrics import Metrics

    server.configure_logging(settings)
    try:
        model = load_model(settings)
    except Exception as e:
        print(f"modelservice serve: worker {index}: {e}", file=sys.stderr)
        sys.exit(CANNOT_START)
    metrics = Metrics(cells, worker=index, workers=workers)

    def heartbeat() -> None:
        beats[index] = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes

    def count_close() -> None:
        closed[index] += 1  # only this worker's event loop writes its cell

    code = server.serve(
        settings,
        metrics=metrics,
        model=model,
        handed_over=HandedOverConnections(channel, count_close),
        heartbeat=heartbeat,
    )
    sys.exit(code)


class Supervisor:
    """Keeps `count` workers running until asked to stop; see the module doc."""

    def __init__(self, settings: Settings, count: int) -> None:
        from modelservice_runtime.serving.metrics import shared_cells

        listener = listening_socket(settings.host, settings.port)
        self.settings = settings.model_copy(update={"port": listener.getsockname()[1]})
        if settings.intra_op_threads == 0:
            # onnxruntime's default is a thread per core in *each* worker: N workers would
            # put N threads on every core and spin them against each other.
            threads = max(1, available_cpus() // count)
            self.settings = self.settings.model_copy(update={"intra_op_threads": threads})
        self.count = count
        self._cells = shared_cells(count)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}
        self._crashes: collections.deque[float] = collections.deque()
        self._beats = self._ctx.RawArray("d", count)  # last heartbeat per worker; 0: none yet
        self._closed = self._ctx.RawArray("Q", count)  # connections each worker has closed
        self._balancer = Balancer(listener, self._beats, self._closed)
        self._started_at = time.monotonic()
        self._lost_one = False  # a worker exited before the port listened
        self.stopping = False
        self.failed = False

    def _start(self, index: int) -> None:
        self._beats[index] = 0.0
        channel = self._balancer.attach(index)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(
                self.settings, index, self.count, self._cells, self._beats, self._closed,
                channel, os.getpid(),
            ),
            name=f"modelservice-worker-{index}",
        )  # fmt: skip
        proc.start()
        channel.close()  # the worker has its own copy now
        self._procs[index] = proc

    def _may_listen(self) -> bool:
        """Listen once every worker serves; or, if one has died or is slow, once any does."""
        serving = sum(1 for beat in self._beats if beat)
        if serving == self.count:
            return True
        waited = time.monotonic() - self._started_at
        return serving > 0 and (self._lost_one or waited > START_TOGETHER_TIMEOUT_S)

    def _fail(self) -> None:
        self.failed = True
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.stopping = True
        self._balancer.drain()
        for proc in list(self._procs.values()):  # may run in the balancer's thread
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, sig)

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping %d workers", signal.Signals(sig).name, len(self._procs))
        self.stop(sig)

    def _reap(self, index: int, proc: BaseProcess) -> None:
        proc.join()
        del self._procs[index]
        code = proc.exitcode
        self._lost_one = True  # if the port waits for this one to load, it waits no more
        if self.stopping:
            # A worker still loading when the signal came dies of it: nothing was lost.
            self.failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            return
        if code == CANNOT_START:
            log.error("worker %d cannot start (see above); stopping the server", index)
            self.failed = True
            self.stop()
            return
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > RESTART_WINDOW_S:
            self._crashes.popleft()
        if len(self._crashes) > RESTARTS_ALLOWED:
            log.error(
                "workers exited %d times in %.0f s; stopping the server",
                len(self._crashes),
                RESTART_WINDOW_S,
            )
            self.failed = True
            self.stop()
            return
        log.warning("worker %d (pid %s) exited with %s; restarting it", index, proc.pid, code)
        self._start(index)

    def _kill_if_stuck(self, index: int, proc: BaseProcess) -> None:
        """SIGKILL a serving worker whose heartbeat is older than --worker-timeout-s; the
        next round reaps and restarts it. A worker still loading has no heartbeat yet."""
        last = self._beats[index]
        silent = time.monotonic() - last
        if last and silent > self.settings.worker_timeout_s and proc.pid is not None:
            log.error(
                "worker %d (pid %d): event loop silent for %.0f s (--worker-timeout-s %g); "
                "killing it",
                index,
                proc.pid,
                silent,
                self.settings.worker_timeout_s,
            )
            self._beats[index] = 0.0  # kill once
            os.kill(proc.pid, signal.SIGKILL)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                if not self.stopping:
                    self._start(index)
            self._balancer.start(self._may_listen, LISTEN_BACKLOG, on_crash=self._fail)
            log.info(
                "serving on %s:%d with %d workers (pids %s)",
                self.settings.host,
                self.settings.port,
                self.count,
                ",".join(str(p.pid) for p in self._procs.values()),
            )
            while self._procs:
                wait([p.sentinel for p in self._procs.values()], timeout=1.0)
                for index, proc in list(self._procs.items()):
                    if not proc.is_alive():
                        self._reap(index, proc)
                    else:
                        self._kill_if_stuck(index, proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._balancer.stop()
        return 1 if self.failed else 0


def supervise(settings: Settings, count: int) -> int:
    """Run `count` workers until they stop; the exit code of `modelservice serve`."""
    try:
        supervisor = Supervisor(settings, count)
    except OSError as e:
        print(
            f"modelservice serve: {preflight.listen_error(settings.host, settings.port, e)}",
            file=sys.stderr,
        )
        return 1
    return supervisor.run()
