"""`modelservice activator`: holds HTTP requests for ModelServices scaled to zero.

Why a component of our own: the Gateway (Traefik here) routes but cannot hold a request
for a backend with no endpoint (it answers 503 at once), and the scaling engines that could
decide (KEDA) do not hold requests either (KEDA's HTTP add-on would be one more component,
and KEDA's cold build does not fit the CI budget beside Traefik). Knative and KubeAI have
an activator for the same reason. The decision itself is the operator's (scaling.py); this
process only holds, asks for a wake, and forwards.

While a ModelService is at zero (or waking), its HTTPRoute sends to this Service with the
header `X-ModelService-Target: <namespace>/<name>` (scaling.TARGET_HEADER). For each request:

1. the ModelService is read (its hold bound, autoscaling.holdTimeoutSeconds; its status);
2. at zero, the annotation scaling.WAKE_ANNOTATION is set on it (at most once per
   WAKE_EVERY_S per model, not per request), which the operator answers by scaling the
   Deployment back up;
3. the request waits for a Ready endpoint of the Service <name> (its EndpointSlices), then
   is forwarded to that pod, the response body streamed back as it comes (a streamed
   OpenAI completion streams through);
   (header X-ModelService-Held-Seconds says how long it was held);
4. past the bound it gets 503 `{"error": "ModelService <ns>/<name> is not ready after <n> s:
   ..."}` naming the status's phase, reason and message; a request without the header
   gets 400.

It keeps no state of its own: everything is in the ModelService (annotation, status) and
the EndpointSlices. Told to stop (SIGTERM), it goes on holding for DRAIN_S (a model that
wakes meanwhile still answers them), then answers the rest 503; a restart loses nothing
else.
gRPC requests are not held (only the HTTPRoute goes through here).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.scaling import (
    SINCE,
    TARGET_HEADER,
    WAKE_ANNOTATION,
    at_zero,
    parse_time,
    rfc3339,
    scale_state,
)

log = logging.getLogger("modelservice_operator.activator")

DEFAULT_PORT = 8080
# On every answer the activator forwards: the seconds it held the request for a Ready pod.
HELD_HEADER = "X-ModelService-Held-Seconds"
DEFAULT_HOLD_S = 300
WAKE_EVERY_S = 5.0  # at most one wake annotation per model this often
POLL_S = 0.25  # how often a held request looks for a Ready endpoint
CACHE_S = 0.2  # how long one read of a ModelService or its endpoints serves every request
MAX_BUFFERED_BODY = 8 * 1024 * 1024  # larger (or unknown-length) bodies are streamed
# Told to stop (SIGTERM): requests still held get their 503 after this long, within the
# pod's grace period (30 s by default), instead of a cut connection (the Gateway's 502);
# requests already forwarded get SHUTDOWN_S to finish.
DRAIN_S = 20.0
SHUTDOWN_S = 25.0
# Hop-by-hop headers (RFC 9110 7.6.1) and what the proxy sets itself.
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})  # fmt: skip


def parse_target(value: str | None) -> tuple[str, str] | None:
    """<namespace>/<name> of the header, or None when absent or malformed."""
    if not value or value.count("/") != 1:
        return None
    namespace, name = value.strip().split("/")
    return (namespace, name) if namespace and name else None


def hold_seconds(msvc: Mapping[str, Any]) -> int:
    a = (msvc.get("spec") or {}).get("autoscaling") or {}
    return int(a.get("holdTimeoutSeconds") or DEFAULT_HOLD_S)


def not_ready_message(namespace: str, name: str, held_s: float, msvc: Mapping[str, Any]) -> str:
    """The 503's message: what the ModelService's status says it waits for."""
    status = msvc.get("status") or {}
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )  # fmt: skip
    why = ", ".join(
        str(x) for x in (status.get("phase"), ready.get("reason"), ready.get("message")) if x
    )
    why = why or "no status"
    return f"ModelService {namespace}/{name} is not ready after {held_s:.0f} s: {why}"


def needs_wake(msvc: Mapping[str, Any]) -> bool:
    """At zero and no wake asked since it went there (the operator wakes on the first)."""
    status = msvc.get("status")
    if not at_zero(status):
        return False
    annotations = (msvc.get("metadata") or {}).get("annotations") or {}
    asked = parse_time(annotations.get(WAKE_ANNOTATION))
    since = parse_time(scale_state(status).get(SINCE))
    return asked is None or (since is not None and asked < since)


def ready_endpoints(slices: list[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """(address, port) of every Ready endpoint of the Service's EndpointSlices, on its
    port named http."""
    out = []
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == "http"), None)
        if port is None:
            continue
        for e in s.get("endpoints") or []:
            if (e.get("conditions") or {}).get("ready") is False:
                continue
            out += [(str(a), int(port)) for a in e.get("addresses") or []]
    return out


def _json_error(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


@dataclass
class _Cached:
    at: float
    value: Any


class Activator:
    """The request handler, with short-lived caches of API reads shared by all requests."""

    def __init__(self, drain_s: float = DRAIN_S) -> None:
        self._msvc: dict[tuple[str, str], _Cached] = {}
        self._endpoints: dict[tuple[str, str], _Cached] = {}
        self._woken: dict[tuple[str, str], float] = {}
        self._session: Any = None
        self._drain_s = drain_s
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

    async def endpoints(self, namespace: str, name: str) -> list[tuple[str, int]]:
        def read() -> list[tuple[str, int]]:
            selector = f"kubernetes.io/service-name={name}"
            return ready_endpoints(client().list_objects("EndpointSlice", namespace, selector))

        return await self._cached(self._endpoints, (namespace, name), read)  # type: ignore[no-any-return]

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

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        target = parse_target(request.headers.get(TARGET_HEADER))
        if target is None:
            if request.path == "/healthz" and TARGET_HEADER not in request.headers:
                return web.Response(text="ok")
            return _json_error(
                400, f"header {TARGET_HEADER}: expected <namespace>/<name> of a ModelService "
                "(the HTTPRoute of a ModelService at zero sets it)",
            )  # fmt: skip
        namespace, name = target
        start = time.monotonic()
        try:
            msvc = await self.modelservice(namespace, name)
        except KubeApiError as e:
            return _json_error(503, f"ModelService {namespace}/{name}: cannot read it: {e}")
        if msvc is None:
            return _json_error(404, f"ModelService {namespace}/{name} does not exist")
        deadline = start + hold_seconds(msvc)
        body: bytes | None = None
        length = request.content_length
        if request.can_read_body and length is not None and length <= MAX_BUFFERED_BODY:
            body = await request.read()
        while True:
            try:
                found = await self.endpoints(namespace, name)
                if found:
                    break
                msvc = await self.modelservice(namespace, name) or msvc
                await self.wake(namespace, name, msvc)
            except KubeApiError as e:
                log.warning("held request for %s/%s: %s", namespace, name, e)
            if time.monotonic() >= deadline or self._drained():
                held = time.monotonic() - start
                message = not_ready_message(namespace, name, held, msvc)
                if self._drained():
                    message += " (the activator holding it is shutting down: retry)"
                return _json_error(503, message)
            await asyncio.sleep(POLL_S)
        held = time.monotonic() - start
        if held > 0.5:
            log.info("request for %s/%s held %.2f s for a Ready pod", namespace, name, held)
        return await self.forward(request, random.choice(found), body, namespace, name, held)

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
        url = f"http://{host}:{port}{request.rel_url}"
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_HEADERS and k.lower() != TARGET_HEADER.lower()
        }
        data: Any = body
        if body is None and request.can_read_body:
            data = request.content.iter_chunked(64 * 1024)
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
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, OSError) as e:
            return _json_error(
                502, f"ModelService {namespace}/{name}: forwarding to pod {host}:{port} failed: {e}"
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def create_app(activator: Activator | None = None) -> Any:
    from aiohttp import web

    activator = activator or Activator()
    app = web.Application(client_max_size=MAX_BUFFERED_BODY)
    app.router.add_route("*", "/{tail:.*}", activator.handle)

    async def on_shutdown(_: Any) -> None:
        activator.stop_holding()

    async def on_cleanup(_: Any) -> None:
        await activator.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)"
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client(pool_size=32)  # credentials now: a broken config fails at start
    log.info("modelservice activator listening on %s:%d", args.host, args.port)
    web.run_app(
        create_app(), host=args.host, port=args.port, print=None, access_log=None,
        shutdown_timeout=SHUTDOWN_S,
    )  # fmt: skip
    return 0
