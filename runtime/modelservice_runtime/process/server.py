"""One server process: the app under uvicorn, speaking this runtime's HTTP protocol.

Shutdown on SIGTERM (or SIGINT) is graceful and ordered for Kubernetes: readiness turns
false at once, the server keeps answering for --shutdown-delay-s so endpoints stop routing
to it, then it stops accepting, finishes every in-flight request (up to
--graceful-timeout-s) and exits 0. A second signal skips the delay. A worker of a
multi-process server (workers.py) runs the same, on the connections its supervisor hands
it (balancer.py) instead of a listening socket of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from modelservice_runtime.settings import Settings

if TYPE_CHECKING:
    from modelservice_runtime.process.balancer import HandedOverConnections
    from modelservice_runtime.serving.app import RuntimeApp
    from modelservice_runtime.serving.grpc_front.server import GrpcFront
    from modelservice_runtime.serving.metrics import Metrics
    from modelservice_runtime.serving.model import OnnxModel

log = logging.getLogger("modelservice.serve")


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


class Server(uvicorn.Server):
    """uvicorn's server, draining as the module doc says, and serving `handed_over`
    connections when there are any instead of listening itself."""

    def __init__(
        self,
        config: uvicorn.Config,
        app: RuntimeApp,
        settings: Settings,
        handed_over: HandedOverConnections | None,
    ) -> None:
        super().__init__(config)
        self.app = app
        self.settings = settings
        self.handed_over = handed_over
        self.grpc: GrpcFront | None = None
        self.grpc_error: str | None = None
        self._grpc_stopped: asyncio.Future[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.handed_over is None:
            await super().startup(sockets)
            await self._start_grpc()
            return
        await super().startup(sockets=[])  # no listening socket of our own
        await self._start_grpc()
        if self.started:
            config = self.config
            self.handed_over.start(
                functools.partial(
                    config.http_protocol_class,
                    config=config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                )
            )

    async def _start_grpc(self) -> None:
        """The gRPC front end on this loop, over the app's data plane (--grpc-port)."""
        if not self.started or not self.settings.grpc_port:
            return
        from modelservice_runtime.serving.grpc_front.server import GrpcFront

        # Workers share the port through SO_REUSEPORT (grpc_front/server.py).
        front = GrpcFront(self.app.state.dataplane, reuse_port=self.handed_over is not None)
        try:
            await front.start()
        except OSError as e:
            log.error("%s", e)
            self.grpc_error = str(e)
            self.should_exit = True
            return
        self.grpc = front

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.handed_over is not None:
            self.handed_over.stop()  # stop accepting, as uvicorn closes its listeners
        if self.grpc is not None:  # drains beside HTTP, both before the data plane closes
            self._grpc_stopped = asyncio.ensure_future(
                self.grpc.stop(self.settings.graceful_timeout_s)
            )
        await super().shutdown(sockets)
        if self._grpc_stopped is not None:
            await self._grpc_stopped

    async def _wait_tasks_to_complete(self) -> None:
        """uvicorn's wait for in-flight HTTP requests, and for the gRPC calls too: the
        lifespan shutdown after it closes the data plane. (A uvicorn internal: checked by
        tests/unit/test_third_party_internals.py.)"""
        await super()._wait_tasks_to_complete()
        if self._grpc_stopped is not None:
            await asyncio.shield(self._grpc_stopped)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        dataplane = self.app.state.dataplane
        delay = self.settings.shutdown_delay_s
        if dataplane.draining or delay <= 0:
            dataplane.draining = True
            self.should_exit = True  # second signal, or no delay wanted: stop now
            return
        dataplane.draining = True
        log.info(
            "%s: not ready; stopping in %.1fs after in-flight requests finish",
            signal.Signals(sig).name,
            delay,
        )
        timer = threading.Timer(delay, self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def serve(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    model: OnnxModel | None = None,
    handed_over: HandedOverConnections | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> int:
    """Run one server process until it is stopped; the exit code of `modelservice serve`.
    A worker of a multi-process server passes its shared metrics, its loaded model, the
    connections its supervisor hands it and its heartbeat."""
    # Imported here: a supervisor (workers.py) imports this module but never serves.
    from modelservice_runtime.serving.app import create_app
    from modelservice_runtime.transport.http_protocol import http_protocol

    def fatal() -> None:
        server.should_exit = True

    app = create_app(settings, on_fatal=fatal, metrics=metrics, model=model, heartbeat=heartbeat)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # per-request logging costs more than the MLP's inference
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        lifespan="on",
        # Whole requests, inference answered without ASGI (transport/http_protocol.py).
        http=http_protocol(
            settings.max_request_bytes,
            settings.request_timeout_s,
            direct=app.direct,
            on_closed=handed_over.on_closed if handed_over is not None else None,
        ),
    )
    server = Server(config, app, settings, handed_over)
    log.info(
        "serving %s as %r on %s:%d (%r)",
        settings.model_path,
        settings.name,
        settings.host,
        settings.port,
        settings,
    )
    server.run()
    if server.grpc_error:
        print(f"modelservice serve: {server.grpc_error}", file=sys.stderr)
        return 1
    if app.state.dataplane.load_error:
        print(f"modelservice serve: {app.state.dataplane.load_error}", file=sys.stderr)
        return 1
    return 0
