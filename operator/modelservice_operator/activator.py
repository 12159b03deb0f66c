"""`modelservice activator`: holds HTTP and gRPC requests for ModelServices scaled to zero.

Why a component of our own (as Knative and KubeAI have), and not KEDA: docs/scale-to-zero.md.
The decision is the operator's (scaling.py); this process only holds, asks for a wake, and
forwards.

While a ModelService is at zero (or waking), its HTTPRoute sends to this Service's HTTP port,
and its GRPCRoute to its gRPC port (h2c), with the header `X-ModelService-Target:
<namespace>/<name>` (scaling.TARGET_HEADER; lowercase in gRPC metadata). Its own Service
<name> sends here too, through a hold slice (service_hold.py): such a request names its
model by its Host instead (<name>.<namespace>..., or the Service's ClusterIP or bare name,
found among the hold slices). For each request, HTTP or gRPC alike (one Activator, two front
ends over the same hold):

1. the ModelService is read (its hold bound, autoscaling.holdTimeoutSeconds; its status);
2. at zero, the annotation scaling.WAKE_ANNOTATION is set on it (at most once per
   WAKE_EVERY_S per model, not per request), which the operator answers by scaling the
   Deployment back up;
3. the request waits for a Ready endpoint of the Service <name> (its EndpointSlices) on the
   port of its kind (`http`, or `grpc` as render.py names the runtime's gRPC port), then is
   forwarded to that pod, the answer streamed back as it comes (a streamed OpenAI
   completion, a server-streaming or bidirectional gRPC call: every method passes as raw
   bytes, whatever its shape); header (gRPC: initial metadata) X-ModelService-Held-Seconds
   says how long it was held;
4. past the bound it gets 503 `{"error": "ModelService <ns>/<name> is not ready after <n> s:
   ..."}` (gRPC: UNAVAILABLE with the same message) naming the status's phase, reason and
   message; a request that names no model (neither the header nor its Host) gets 400
   (INVALID_ARGUMENT), one for a ModelService that does not exist 404 (NOT_FOUND). An HTTP
   body that does not arrive within BODY_READ_S (buffered), or stops arriving for that
   long (streamed: over MAX_BUFFERED_BODY, or chunked), gets 408.

It keeps no state of its own: everything is in the ModelService (annotation, status) and
the EndpointSlices. Told to stop (SIGTERM), it goes on holding for DRAIN_S (a model that
wakes meanwhile still answers them), then answers the rest 503 (gRPC: UNAVAILABLE); a
restart loses nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.scaling import (
    HELD_HEADER,
    HELD_KEY,
    HOP_HEADERS,
    TARGET_HEADER,
    TARGET_KEY,
    WAKE_ANNOTATION,
    hold_seconds,
    needs_wake,
    not_ready_message,
    parse_target,
    passed_metadata,
    rfc3339,
)
from modelservice_operator.service_hold import (
    GRPC_PORT_NAME,
    HOLD_SLICES_SELECTOR,
    HTTP_PORT_NAME,
    bare_host,
    model_slices_selector,
    ready_endpoints,
    target_of_host,
)

log = logging.getLogger("modelservice_operator.activator")

DEFAULT_PORT = 8080
DEFAULT_GRPC_PORT = 8081  # the gRPC (h2c) listener; 0: none
WAKE_EVERY_S = 5.0  # at most one wake annotation per model this often
POLL_S = 0.25  # how often a held request looks for a Ready endpoint
CACHE_S = 0.2  # how long one read of a ModelService or its endpoints serves every request
# How long a Host the hold slices resolved (a ClusterIP, a bare name) stays known after its
# slice is gone: kube-proxy may still send a request or two here for a moment after the
# operator deletes the slice (the model awake again); those are forwarded, not refused.
RESOLVED_S = 60.0
MAX_BUFFERED_BODY = 8 * 1024 * 1024  # larger (or unknown-length) bodies are streamed
# A buffered body must arrive within this once the headers have, and a streamed one may not
# pause longer: a client (or a Gateway connection) that stalls gets 408, instead of a task
# (and the pod's request) waiting forever.
BODY_READ_S = 30.0
# gRPC messages pass whole (the proxy does not parse them): up to the runtime's own default
# bound on a request (`modelservice serve --max-request-bytes`, 64 MiB).
MAX_GRPC_MESSAGE = 64 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
)
MAX_GRPC_CHANNELS = 64  # channels to pods kept open; the least recently used closes first
# Told to stop (SIGTERM): requests still held get their 503 after this long, within the
# pod's grace period (30 s by default), instead of a cut connection (the Gateway's 502);
# requests already forwarded get SHUTDOWN_S to finish.
DRAIN_S = 20.0
SHUTDOWN_S = 25.0
# The activator's own answers: HTTP status -> gRPC status code's name.
GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE"}


class Refused(Exception):
    """A request the activator answers itself: HTTP `status` (GRPC_CODES for gRPC) and the
    message of `{"error": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json_error(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Cached:
    at: float
    value: Any


class Activator:
    """Both front ends (HTTP: `handle`; gRPC: `handle_grpc`) over one hold (`target`,
    `hold`), with short-lived caches of API reads shared by all requests."""

    def __init__(
        self,
        drain_s: float = DRAIN_S,
        body_read_s: float = BODY_READ_S,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self._msvc: dict[tuple[str, str], _Cached] = {}
        self._slices: dict[tuple[str, str], _Cached] = {}
        self._hold_slices: dict[tuple[str, str], _Cached] = {}
        self._resolved: dict[str, _Cached] = {}  # Host -> (namespace, name), RESOLVED_S
        # Where the hold slices are looked for: every namespace (a ClusterRole), or only the
        # watched ones (a Role in each: the chart's watchNamespaces).
        self._namespaces = namespaces
        self._woken: dict[tuple[str, str], float] = {}
        self._session: Any = None
        self._channels: dict[tuple[str, int], Any] = {}  # grpc.aio channels, oldest use first
        self._closing: set[asyncio.Task[None]] = set()
        self._grpc_server: Any = None
        self.grpc_port = 0  # bound by serve_grpc
        self._grpc_stopping: asyncio.Task[None] | None = None
        self._drain_s = drain_s
        self._body_read_s = body_read_s
        self._stopping: float | None = None  # monotonic time the server was told to stop

    def stop_holding(self) -> None:
        """The server is stopping: held requests end within drain_s."""
        if self._stopping is None:
            self._stopping = time.monotonic()
            log.info("stopping: requests still held in %.0f s get 503", self._drain_s)

    def _drained(self) -> bool:
        return self._stopping is not None and time.monotonic() - self._stopping >= self._drain_s

    async def _cached(
        self, cache: dict[tuple[str, str], _Cached], key: tuple[str, str], read: Any
    ) -> Any:
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit.at < CACHE_S:
            return hit.value
        value = await asyncio.to_thread(read)
        cache[key] = _Cached(now, value)
        return value

    async def modelservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._cached(  # type: ignore[no-any-return]
            self._msvc, (namespace, name), lambda: client().get("ModelService", namespace, name)
        )

    async def endpoints(
        self, namespace: str, name: str, port_name: str = HTTP_PORT_NAME
    ) -> list[tuple[str, int]]:
        """Ready endpoints of the Service <name> on its port `port_name` (one read of its
        EndpointSlices serves both front ends); never the hold slice's (ours)."""

        def read() -> list[dict[str, Any]]:
            selector = model_slices_selector(name)
            return client().list_objects("EndpointSlice", namespace, selector)

        return ready_endpoints(await self._cached(self._slices, (namespace, name), read), port_name)

    async def wake(self, namespace: str, name: str, msvc: Mapping[str, Any]) -> None:
        """Ask the operator for a wake (the annotation), at most once per WAKE_EVERY_S."""
        key = (namespace, name)
        now = time.monotonic()
        if not needs_wake(msvc) or now - self._woken.get(key, -WAKE_EVERY_S) < WAKE_EVERY_S:
            return
        self._woken[key] = now
        stamp = rfc3339(datetime.now(UTC))
        body = {"metadata": {"annotations": {WAKE_ANNOTATION: stamp}}}
        try:
            await asyncio.to_thread(client().merge_patch, "ModelService", namespace, name, body)
            log.info("asked for a wake of %s/%s at %s", namespace, name, stamp)
        except KubeApiError as e:
            log.warning("could not ask for a wake of %s/%s: %s", namespace, name, e)

    async def hold_slices(self) -> list[dict[str, Any]]:
        """Every hold slice (service_hold.py) where this activator may look."""

        def read() -> list[dict[str, Any]]:
            kube = client()
            return [
                s
                for namespace in self._namespaces or (None,)
                for s in kube.list_objects("EndpointSlice", namespace, HOLD_SLICES_SELECTOR)
            ]

        return await self._cached(self._hold_slices, ("", ""), read)  # type: ignore[no-any-return]

    async def _resolve(self, host: str) -> tuple[str, str] | None:
        """The model a ClusterIP or bare-name Host is for, from the hold slices, or as they
        said within RESOLVED_S (the slice deleted meanwhile)."""
        now, host = time.monotonic(), bare_host(host)
        try:
            target = target_of_host(host, await self.hold_slices())
        except KubeApiError as e:
            log.warning("cannot list the hold slices: %s", e)
            target = None
        if target is not None:
            self._resolved[host] = _Cached(now, target)
            return target
        known = self._resolved.get(host)
        if known is not None and now - known.at < RESOLVED_S:
            return known.value  # type: ignore[no-any-return]
        self._resolved.pop(host, None)
        return None

    async def target(
        self, value: str | None, host: str | None = None
    ) -> tuple[str, str, dict[str, Any]]:
        """The ModelService the route's header names, else the one whose Service the Host
        names (a request sent to the Service directly): (namespace, name, the object).
        Refused 400 when neither names one, 404 when it does not exist, 503 unreadable."""
        target = parse_target(value)
        if target is None and value is None and host:
            target = target_of_host(host)
            if target is None:  # a ClusterIP or a bare name: the hold slices tell
                target = await self._resolve(host)
        if target is None:
            raise Refused(
                400, f"header {TARGET_HEADER}: expected <namespace>/<name> of a ModelService "
                "(the HTTPRoute or GRPCRoute of a ModelService at zero sets it); without it, "
                f"the Host ({host or 'none'}) must name the Service of a ModelService at zero "
                "(<name>.<namespace>, its ClusterIP, or its name)",
            )  # fmt: skip
        namespace, name = target
        try:
            msvc = await self.modelservice(namespace, name)
        except KubeApiError as e:
            raise Refused(503, f"ModelService {namespace}/{name}: cannot read it: {e}") from e
        if msvc is None:
            raise Refused(404, f"ModelService {namespace}/{name} does not exist")
        return namespace, name, msvc

    async def hold(
        self,
        namespace: str,
        name: str,
        msvc: Mapping[str, Any],
        start: float,
        port_name: str = HTTP_PORT_NAME,
    ) -> tuple[tuple[str, int], float]:
        """Wait for a Ready endpoint on `port_name` (asking for a wake meanwhile), up to the
        ModelService's hold bound from `start`: (the endpoint, seconds held). Refused 503
        past the bound, or once told to stop and drained."""
        deadline = start + hold_seconds(msvc)
        while True:
            try:
                found = await self.endpoints(namespace, name, port_name)
                if found:
                    break
                msvc = await self.modelservice(namespace, name) or msvc
                await self.wake(namespace, name, msvc)
            except KubeApiError as e:
                log.warning("held request for %s/%s: %s", namespace, name, e)
            if time.monotonic() >= deadline or self._drained():
                message = not_ready_message(namespace, name, time.monotonic() - start, msvc)
                if self._drained():
                    message += " (the activator holding it is shutting down: retry)"
                raise Refused(503, message)
            await asyncio.sleep(POLL_S)
        held = time.monotonic() - start
        if held > 0.5:
            log.info("request for %s/%s held %.2f s for a Ready pod", namespace, name, held)
        return random.choice(found), held

    async def read_body(self, request: Any) -> bytes | None:
        """The body, when its Content-Length is known and at most MAX_BUFFERED_BODY (else
        None: it is streamed). Refused 408 when it does not arrive within body_read_s."""
        length = request.content_length
        if not (request.can_read_body and length is not None and length <= MAX_BUFFERED_BODY):
            return None
        try:
            return await asyncio.wait_for(request.read(), self._body_read_s)  # type: ignore[no-any-return]
        except TimeoutError:
            raise Refused(
                408, f"request body: Content-Length {length} announced, but the body did not "
                f"arrive within {self._body_read_s:g} s; nothing was forwarded",
            ) from None  # fmt: skip

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.path == "/healthz" and TARGET_HEADER not in request.headers:
            return web.Response(text="ok")
        start = time.monotonic()
        try:
            namespace, name, msvc = await self.target(
                request.headers.get(TARGET_HEADER), request.headers.get("Host")
            )
            body = await self.read_body(request)
            endpoint, held = await self.hold(namespace, name, msvc, start)
        except Refused as e:
            return _json_error(e.status, str(e))
        return await self.forward(request, endpoint, body, namespace, name, held)

    async def forward(
        self,
        request: Any,
        endpoint: tuple[str, int],
        body: bytes | None,
        namespace: str,
        name: str,
        held: float = 0.0,
    ) -> Any:
        """Send the request to the pod and stream its answer back, with the header
        HELD_HEADER saying how long it was held (so a client can tell a cold start)."""
        import aiohttp
        from aiohttp import web

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
            )
        host, port = endpoint
        url = f"http://{_host_port(host, port)}{request.rel_url}"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_HEADERS and k.lower() != TARGET_HEADER.lower()
        }
        data: Any = body
        stalled: list[float] = []  # the seconds waited, once a streamed body stopped coming
        if body is None and request.can_read_body:
            data = self._streamed_body(request, stalled)
        prepared = False
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            ) as upstream:
                out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for k, v in upstream.headers.items():
                    if k.lower() not in HOP_HEADERS:
                        out.headers.add(k, v)
                out.headers[HELD_HEADER] = f"{held:.3f}"
                if upstream.content_length is not None:
                    out.content_length = upstream.content_length
                await out.prepare(request)
                prepared = True
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, OSError) as e:
            if prepared:
                # The status line and part of the answer are out: a second response would
                # land in the middle of this one's body. The client learns of the break by
                # its connection closing before the body's end.
                log.warning(
                    "ModelService %s/%s: pod %s:%s broke off its answer (%s); closing the "
                    "client's connection", namespace, name, host, port, e,
                )  # fmt: skip
                if request.transport is not None:
                    request.transport.close()
                return out
            if stalled:
                return _json_error(
                    408, f"request body: nothing arrived for {stalled[0]:g} s in the middle "
                    "of a streamed body; the request to the pod was cancelled",
                )  # fmt: skip
            return _json_error(
                502, f"ModelService {namespace}/{name}: forwarding to pod {host}:{port} failed: {e}"
            )

    async def _streamed_body(self, request: Any, stalled: list[float]) -> AsyncIterator[bytes]:
        """A body too large (or of unknown length) to buffer, passed on as it comes; a gap of
        body_read_s between two chunks ends it (noted in `stalled`): a client that stops
        sending mid-body does not hold the pod's request open forever."""
        chunks = request.content.iter_chunked(64 * 1024).__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), self._body_read_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                stalled.append(self._body_read_s)
                raise OSError("the request body stalled") from None
            yield chunk

    # --- gRPC ---------------------------------------------------------------------------

    async def handle_grpc(
        self, method: str, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        """Any gRPC method (unary, server-streaming, bidirectional: one stream-stream
        handler of raw bytes): held like an HTTP request, then forwarded to the pod's gRPC
        port, its replies, status and metadata relayed."""
        import grpc

        start = time.monotonic()
        metadata = tuple(context.invocation_metadata() or ())
        value = next((v for k, v in metadata if k.lower() == TARGET_KEY), None)
        try:
            namespace, name, msvc = await self.target(value if isinstance(value, str) else None)
            endpoint, held = await self.hold(namespace, name, msvc, start, GRPC_PORT_NAME)
        except Refused as e:
            await context.abort(getattr(grpc.StatusCode, GRPC_CODES[e.status]), str(e))
            return
        call = self._channel(endpoint).stream_stream(method)(
            requests, metadata=passed_metadata(metadata), timeout=context.time_remaining()
        )
        answered = False
        try:
            initial = passed_metadata(await call.initial_metadata())
            answered = bool(initial)
            await context.send_initial_metadata((*initial, (HELD_KEY, f"{held:.3f}")))
            async for reply in call:
                answered = True
                yield reply
            context.set_trailing_metadata(passed_metadata(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            if not answered and e.code() is grpc.StatusCode.UNAVAILABLE:
                host, port = endpoint
                details = (
                    f"ModelService {namespace}/{name}: forwarding to pod {_host_port(host, port)}"
                    f" failed: {details}"
                )
            await context.abort(e.code(), details, passed_metadata(e.trailing_metadata()))
        finally:
            call.cancel()  # the client gone (or done): nothing more to the pod

    def _channel(self, endpoint: tuple[str, int]) -> Any:
        """The channel to this pod (kept: one HTTP/2 connection serves every call), the
        least recently used closed past MAX_GRPC_CHANNELS (pods come and go)."""
        import grpc

        channel = self._channels.pop(endpoint, None)
        if channel is None:
            channel = grpc.aio.insecure_channel(_host_port(*endpoint), options=GRPC_OPTIONS)
        self._channels[endpoint] = channel
        while len(self._channels) > MAX_GRPC_CHANNELS:
            stale = self._channels.pop(next(iter(self._channels)))
            task = asyncio.get_running_loop().create_task(stale.close(grace=SHUTDOWN_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return channel

    async def serve_grpc(self, host: str, port: int) -> int:
        """Start the gRPC (h2c) listener in the running loop: the port bound."""
        import grpc

        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers([_GrpcFront(self)])
        address = _host_port(host, port)
        bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._grpc_server, self.grpc_port = server, bound
        log.info("modelservice activator listening for gRPC (h2c) on %s", _host_port(host, bound))
        return bound

    def stop_grpc(self, grace: float = SHUTDOWN_S) -> None:
        """Told to stop: the gRPC listener takes no new call; the calls it has get `grace`
        seconds (those held end within drain_s, stop_holding)."""
        if self._grpc_server is not None and self._grpc_stopping is None:
            self._grpc_stopping = asyncio.get_running_loop().create_task(
                self._grpc_server.stop(grace)
            )

    async def close(self) -> None:
        if self._grpc_server is not None:
            self.stop_grpc()
            await self._grpc_stopping  # type: ignore[misc]
        if self._session is not None:
            await self._session.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class _GrpcFront:
    """The gRPC server's generic handler: every method is a stream-stream handler without
    (de)serializers, so any call shape passes as raw bytes to Activator.handle_grpc."""

    def __init__(self, activator: Activator) -> None:
        self._activator = activator

    def service(self, details: Any) -> Any:
        import grpc

        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self._activator.handle_grpc, details.method)
        )


def create_app(
    activator: Activator | None = None, grpc_address: tuple[str, int] | None = None
) -> Any:
    """The HTTP app; with `grpc_address` (host, port) the gRPC listener starts and stops
    with it."""
    from aiohttp import web

    activator = activator or Activator()
    app = web.Application(client_max_size=MAX_BUFFERED_BODY)
    app.router.add_route("*", "/{tail:.*}", activator.handle)

    async def on_startup(_: Any) -> None:
        if grpc_address is not None:
            await activator.serve_grpc(*grpc_address)

    async def on_shutdown(_: Any) -> None:
        activator.stop_holding()
        activator.stop_grpc()

    async def on_cleanup(_: Any) -> None:
        await activator.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)"
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
        help=f"gRPC (h2c) port (default {DEFAULT_GRPC_PORT}); 0: no gRPC listener",
    )  # fmt: skip
    parser.add_argument(
        "--namespace", action="append", default=[], dest="namespaces",
        help="a namespace whose Services may send here (repeat; default: every namespace, "
        "which needs a ClusterRole to list EndpointSlices)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client(pool_size=32)  # credentials now: a broken config fails at start
    log.info("modelservice activator listening on %s:%d", args.host, args.port)
    grpc_address = (args.host, args.grpc_port) if args.grpc_port else None
    web.run_app(
        create_app(Activator(namespaces=tuple(args.namespaces)), grpc_address=grpc_address),
        host=args.host, port=args.port, print=None,
        access_log=None, shutdown_timeout=SHUTDOWN_S,
    )  # fmt: skip
    return 0
