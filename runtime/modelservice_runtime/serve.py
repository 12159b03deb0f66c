"""`modelservice serve MODEL.onnx`: run the runtime under uvicorn.

Shutdown on SIGTERM (or SIGINT) is graceful and ordered for Kubernetes: readiness turns
false at once, the server keeps answering for --shutdown-delay-s so endpoints stop routing
to it, then it stops accepting, finishes every in-flight request (up to
--graceful-timeout-s) and exits 0. A second signal skips the delay. With --workers N
the same holds for each worker process (workers.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from modelservice_runtime import settings as settings_mod

if TYPE_CHECKING:
    from modelservice_runtime.balancer import HandedOverConnections
    from modelservice_runtime.metrics import Metrics
    from modelservice_runtime.model import OnnxModel

log = logging.getLogger("modelservice.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_args(args)
    except settings_mod.SettingsError as e:
        print(f"modelservice serve: {e}", file=sys.stderr)
        return 2
    configure_logging(settings)
    from modelservice_runtime import workers

    count = workers.worker_count(settings)
    if count > 1:
        return workers.supervise(settings, count)
    return serve(settings)


def configure_logging(settings: settings_mod.Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )


def serve(
    settings: settings_mod.Settings,
    *,
    metrics: Metrics | None = None,
    model: OnnxModel | None = None,
    handed_over: HandedOverConnections | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> int:
    """Run one server process until it is stopped; the exit code of `modelservice serve`.
    A worker of a multi-process server passes its shared metrics, its loaded model, the
    connections its supervisor hands it instead of a listening socket, and its heartbeat
    (see workers.py and balancer.py)."""
    import uvicorn

    from modelservice_runtime.balancer import counting_closes
    from modelservice_runtime.coalesced_writes import coalescing_writes
    from modelservice_runtime.http_protocol import buffered_http_protocol
    from modelservice_runtime.server import create_app

    class GracefulServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            config = self.config
            # Sends wait for the loop's next turn (coalesced_writes.py), on both paths.
            config.http_protocol_class = coalescing_writes(config.http_protocol_class)
            if handed_over is None:
                await super().startup(sockets)
                return
            config.http_protocol_class = counting_closes(
                config.http_protocol_class, handed_over.on_closed
            )
            await super().startup(sockets=[])  # no listening socket of our own
            if self.started:
                handed_over.start(
                    functools.partial(
                        config.http_protocol_class,
                        config=config,
                        server_state=self.server_state,
                        app_state=self.lifespan.state,
                    )
                )

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if handed_over is not None:
                handed_over.stop()  # stop accepting, as uvicorn closes its listeners
            await super().shutdown(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            dataplane = app.state.dataplane
            if dataplane.draining or settings.shutdown_delay_s <= 0:
                dataplane.draining = True
                self.should_exit = True  # second signal, or no delay wanted: stop now
                return
            dataplane.draining = True
            log.info(
                "%s: not ready; stopping in %.1fs after in-flight requests finish",
                signal.Signals(sig).name,
                settings.shutdown_delay_s,
            )
            timer = threading.Timer(settings.shutdown_delay_s, self._stop)
            timer.daemon = True
            timer.start()

        def _stop(self) -> None:
            self.should_exit = True

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
        # Whole requests, inference answered without ASGI (http_protocol.py).
        http=buffered_http_protocol(
            settings.max_request_bytes, app.direct, settings.request_timeout_s
        ),
    )
    server = GracefulServer(config)
    log.info(
        "serving %s as %r on %s:%d (%r)",
        settings.model_path,
        settings.name,
        settings.host,
        settings.port,
        settings,
    )
    server.run()
    if app.state.dataplane.load_error:
        print(f"modelservice serve: {app.state.dataplane.load_error}", file=sys.stderr)
        return 1
    return 0
