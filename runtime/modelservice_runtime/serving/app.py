"""The app: `create_app(settings)` -> a FastAPI app serving every route of the route table.

The routes and their endpoints are in endpoints.py; this module only adds what every route
shares and builds the two ways in from the one table: a FastAPI route per entry (for any
ASGI server, the test client and OpenAPI), and `RuntimeApp.direct`, by which the HTTP
protocol (transport/http_protocol.py) answers the inference POSTs without ASGI at all:
FastAPI's middleware, routing and dependency solving cost more per request than the MLP's
whole inference. Both go through `answer`: authenticate, inflate the body, run the
endpoint, and turn any error into its `Reply` (`{"error": ...}`, errors.py). The hot path
reads the raw body and answers with orjson bytes: no pydantic request models, no JSON
re-encoding by the framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from modelservice_runtime import __version__
from modelservice_runtime.errors import (
    BadRequest,
    ModelServiceError,
    PayloadTooLarge,
    body_too_large,
)
from modelservice_runtime.serving import auth
from modelservice_runtime.serving.auth import Auth, keys_from
from modelservice_runtime.serving.dataplane import DataPlane, load_model
from modelservice_runtime.serving.embedding import EmbeddingModel
from modelservice_runtime.serving.metrics import Metrics
from modelservice_runtime.serving.model import OnnxModel
from modelservice_runtime.serving.reply import Headers, Reply, Route
from modelservice_runtime.serving.routes import route_table
from modelservice_runtime.settings import Settings
from modelservice_runtime.transport.http_exchange import EndsWithClient
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("modelservice.server")

HEARTBEAT_S = 1.0  # see create_app(heartbeat=...)
_PARAM = re.compile(r"\{(\w+)\}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body as sent, refusing (413) more than `limit` bytes: by Content-Length before
    reading, and by counting while reading (chunked bodies have no Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length must be an integer, got {declared!r}") from None
        if size > limit:
            raise body_too_large(limit, size)
    # Straight from the ASGI receive channel: cheaper than request.stream()'s generator.
    chunks: list[bytes] = []
    received = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body inflated per its Content-Encoding: gzip and deflate, as tritonclient's
    request_compression_algorithm sends, with the size limit applied to the inflated body
    so a small bomb cannot take the memory."""
    if encoding is None or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise BadRequest(
            f"Content-Encoding {encoding!r} is not supported; expected gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"request body is not valid {encoding} data ({e})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"decompressed request body is over the limit of {limit} bytes (--max-request-bytes)"
        )
    return out


def _response(reply: Reply) -> Response:
    if reply.stream is not None:  # server-sent events; on a disconnect Starlette stops it
        return StreamingResponse(
            reply.stream, reply.status, headers=reply.headers, media_type=reply.content_type
        )
    return Response(reply.body, reply.status, headers=reply.headers, media_type=reply.content_type)


class RuntimeApp(FastAPI):
    """FastAPI, plus `direct`: the inference POSTs of the route table answered for the HTTP
    protocol without ASGI. Everything else is plain FastAPI."""

    dataplane: DataPlane
    settings: Settings
    _auth: Auth
    _direct: list[tuple[re.Pattern[str], Route]]

    def serve_routes(self, routes: list[Route]) -> None:
        """Serve `routes` both ways: as FastAPI routes, and the direct ones by `direct`."""
        self._direct = []
        for route in routes:
            self.add_api_route(
                route.path,
                self._asgi_endpoint(route),
                methods=[route.method],
                tags=[route.tag],
                name=route.endpoint.__name__,
                description=inspect.getdoc(route.endpoint),
                openapi_extra=route.openapi,
                response_class=Response,
            )
            if route.direct:
                pattern = _PARAM.sub(lambda m: f"(?P<{m[1]}>[^/]+)", route.path)
                self._direct.append((re.compile(pattern), route))

    async def answer(
        self, route: Route, headers: Headers, body: bytes, params: dict[str, Any]
    ) -> Reply:
        """Authenticate, inflate the body and run the endpoint; any error becomes its reply."""
        try:
            caller = self._auth.check(headers) if route.auth else None
            if route.method == "POST":  # its body is the request
                body = decode_body(
                    body, headers.get("content-encoding"), self.settings.max_request_bytes
                )
            entered = self._auth.enter(caller)  # whom the endpoint charges its tokens to
            try:
                return await route.endpoint(headers, body, **params)
            finally:
                auth.reset_caller(entered)
        except ModelServiceError as e:
            return Reply.error(e.status_code, e.message, e.headers)
        except Exception as e:
            log.exception("unexpected error in %s", route.endpoint.__name__, exc_info=e)
            return Reply.error(500, f"internal error: {type(e).__name__}")

    def _asgi_endpoint(self, route: Route) -> Callable[..., Awaitable[Response]]:
        """The FastAPI endpoint of `route`: its path parameters declared (for OpenAPI and
        FastAPI's routing), the body read whole for a POST."""
        limit = self.settings.max_request_bytes

        async def endpoint(request: Request, **params: Any) -> Response:
            body = b""
            if route.method == "POST":
                try:
                    body = await read_body(request, limit)
                except ModelServiceError as e:
                    return _response(Reply.error(e.status_code, e.message, e.headers))
                except ClientDisconnect:  # nobody is left to read an answer
                    return _response(Reply.error(400, "the client left before its body arrived"))
            if route.streams:  # a generation: the client leaving ends it (see _unless_left)
                return _response(
                    await _unless_left(request, self.answer(route, request.headers, body, params))
                )
            return _response(await self.answer(route, request.headers, body, params))

        names = _PARAM.findall(route.path)
        endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
                )
            ]
            + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=str) for n in names]
        )
        return endpoint

    def direct(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Awaitable[Reply] | None:
        """The answer to a direct route's request, or None for a request the app must see."""
        if method != "POST":
            return None
        for pattern, route in self._direct:
            match = pattern.fullmatch(path)
            if match is not None:
                named = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
                answering = self.answer(route, named, body, match.groupdict())
                if self.dataplane.draining:
                    answering = self._closing(answering)
                return EndsWithClient(answering) if route.streams else answering
        return None

    @staticmethod
    async def _closing(answering: Awaitable[Reply]) -> Reply:
        """See _closing_connection."""
        reply = await answering
        return reply._replace(headers={**(reply.headers or {}), "Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.dataplane.draining:
            send = _closing_connection(send)
        await super().__call__(scope, receive, send)


async def _unless_left(request: Request, answering: Awaitable[Reply]) -> Reply:
    """`answering`, cancelled if the client disconnects before it is ready: a non-streamed
    generation whose client left stops using its batch row (a streamed answer is ready at
    once, and its stream is cancelled by the response when the client leaves)."""
    task = asyncio.ensure_future(answering)
    left = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    gone = left.done() and not left.cancelled() and left.exception() is None
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return Reply.error(400, "the client left before its answer was ready")
    reply = task.result()
    if gone and reply.stream is not None:
        # The disconnect was read here, so the response would never see it: end the
        # stream now (closing it cancels its generations).
        await reply.stream.aclose()  # type: ignore[attr-defined]
        return Reply.error(400, "the client left before its answer was ready")
    return reply


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _closing_connection(send: Send) -> Send:
    """While draining, every response carries `Connection: close` (uvicorn then closes the
    socket after it): a client on a kept-alive connection reconnects, to a pod that is staying,
    instead of sending its next request into a listener that is about to disappear."""

    async def send_and_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"connection", b"close")]
            message = {**message, "headers": headers}
        await send(message)

    return send_and_close


def create_app(
    settings: Settings,
    *,
    on_fatal: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
    model: OnnxModel | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> RuntimeApp:
    """Build the app. The model loads in the background at startup: live at once, ready
    once loaded and warmed. `on_fatal` is called if loading fails (serve exits then).
    A worker of a multi-process server passes its shared `metrics`, an already loaded
    `model` (it listens only once ready) and a `heartbeat` to call from the event loop
    every HEARTBEAT_S, so its supervisor sees if the loop is stuck."""
    metrics = metrics if metrics is not None else Metrics()
    dataplane = DataPlane(settings, metrics)

    async def beat(send: Callable[[], None]) -> None:
        while True:
            send()
            await asyncio.sleep(HEARTBEAT_S)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_load(dataplane, model, on_fatal))]
        if heartbeat is not None:
            tasks.append(asyncio.create_task(beat(heartbeat)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await dataplane.close()

    app = RuntimeApp(
        title="ModelService runtime",
        version=__version__,
        lifespan=lifespan,
        description="Open Inference Protocol (KServe V2), KServe V1 and Prometheus metrics.",
    )
    app.dataplane = app.state.dataplane = dataplane
    app.settings = app.state.settings = settings
    app._auth = Auth(settings.auth_token, keys_from(settings))
    metrics.extra.append(app._auth.render)  # per-key counters (nothing without keys)
    app.serve_routes(route_table(dataplane, metrics))

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _load(
    dataplane: DataPlane, model: OnnxModel | None, on_fatal: Callable[[], None] | None
) -> None:
    """Load the model (unless a worker was handed one) and make it servable: ready from
    here on. A model that cannot load is the server's load_error, and on_fatal is called."""
    settings = dataplane.settings
    loaded = model
    if loaded is None:
        try:
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(None, load_model, settings)
        except Exception as e:
            dataplane.load_error = str(e)
            log.error("cannot serve %s: %s", settings.model_path, e)
            if on_fatal is not None:
                on_fatal()
            return
    if isinstance(loaded, OnnxModel):
        dataplane.register(loaded)
    elif isinstance(loaded, EmbeddingModel):
        dataplane.embedding = loaded
        dataplane.register(loaded.onnx)
    else:
        dataplane.register_generative(loaded)
    # Startup objects (onnxruntime, numpy, the app) never die: keep them out of the
    # collector's scans so GC pauses stay short under load (better tail latency).
    gc.collect()
    gc.freeze()
    log.info("model %s is ready", settings.name)


# Framework errors (no such route, a method not allowed) get the same {"error": ...}.
async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    message = {
        404: f"no endpoint {where}; see /docs for the API",
        405: f"method not allowed: {where}; see /docs for the API",
    }.get(exc.status_code, str(exc.detail))
    return _response(Reply.error(exc.status_code, message, getattr(exc, "headers", None)))


async def _validation_error(_r: Request, exc: Exception) -> Response:
    return _response(Reply.error(400, f"invalid request: {exc}"))


async def _unexpected_error(_r: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return _response(Reply.error(500, f"internal error: {type(exc).__name__}"))
