"""The gRPC server: `inference.GRPCInferenceService` and `grpc.health.v1` on --grpc-port.

A grpc.aio server on the HTTP server's event loop, over its data plane (process/server.py
starts it once uvicorn has started, and stops it while uvicorn drains). Its largest request
is the REST body limit (--max-request-bytes): gRPC itself refuses a bigger message with
RESOURCE_EXHAUSTED before it is read whole. Answers have no limit of their own.

With --workers N every worker binds the port with SO_REUSEPORT and the kernel spreads the
connections (balancer.py explains why HTTP does not: gRPC cannot take a connection accepted
elsewhere). One process alone binds without it, so a port already taken is an error at start
instead of a silent share.

The health service says SERVING once the model is ready and NOT_SERVING while loading or
draining, for the empty service name (Kubernetes' grpc probe) and for the inference service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from modelservice_runtime.serving.auth import BearerAuth
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2_grpc as pb_grpc
from modelservice_runtime.serving.grpc_front.service import SERVICE, InferenceService, Unimplemented

log = logging.getLogger("modelservice.grpc")

HEALTH_POLL_S = 0.25  # how soon the health service follows readiness
# How long an answer that has just been handed to gRPC gets to be written before the
# connection closes: gRPC counts a call done once its answer is queued, and its stop can
# then reset the connection under an answer of megabytes still being sent (CI saw a
# drained call fail UNAVAILABLE "Stream removed" that way).
ANSWER_LINGER_S = 1.0


class GrpcFront:
    """Start with `await start()` inside the running loop; `await stop(grace)` drains."""

    def __init__(self, dataplane: DataPlane, *, reuse_port: bool) -> None:
        self.dataplane = dataplane
        self.reuse_port = reuse_port
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service: InferenceService | None = None
        self._watch: asyncio.Task[None] | None = None

    def address(self) -> str:
        s = self.dataplane.settings
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"{host}:{s.grpc_port}"

    async def start(self) -> int:
        """Bind and serve; the bound port. OSError naming the address if it cannot bind."""
        s = self.dataplane.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ]
        )
        service = InferenceService(
            self.dataplane, BearerAuth(s.auth_token), guarded=s.auth_token is not None
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        server.add_generic_rpc_handlers([Unimplemented()])
        address = self.address()
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {address}: {e}") from None
        if not port:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server, self._service, self.port = server, service, port
        self._watch = asyncio.ensure_future(self._follow_readiness())
        log.info("serving gRPC (%s, grpc.health.v1) on %s", SERVICE, address)
        return port

    async def _follow_readiness(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        last = None
        while True:
            status = serving if self.dataplane.ready() else not_serving
            if status != last:
                for name in ("", SERVICE):
                    await self._health.set(name, status)
                last = status
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace: float) -> None:
        """Say NOT_SERVING; let the calls running now finish and their answers go out; then
        refuse new calls (GOAWAY) and give whatever still runs the rest of `grace` seconds
        before it is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._server is None or self._service is None:
            return
        await self._health.enter_graceful_shutdown()
        # Only the calls running now: calls that keep coming must not hold the GOAWAY back.
        in_flight = self._service.in_flight
        if running := in_flight.running():
            await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        if in_flight.last_ended:
            linger = in_flight.last_ended + ANSWER_LINGER_S - loop.time()
            await asyncio.sleep(max(0.0, min(linger, deadline - loop.time())))
        await self._server.stop(max(0.0, deadline - loop.time()))
        self._server = None
