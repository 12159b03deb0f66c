"""The HTTP front end: `create_app(settings)` -> a FastAPI app with every endpoint.

Endpoints only authenticate, read the body, call the protocol parsers and the data plane,
and serialize. The hot path (infer) reads the raw body and answers with orjson bytes: no
pydantic request models, no JSON re-encoding by the framework.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from modelservice_runtime import __version__
from modelservice_runtime.auth import BearerAuth
from modelservice_runtime.dataplane import DataPlane, ModelEntry, load_model
from modelservice_runtime.errors import (
    BadRequest,
    ModelServiceError,
    PayloadTooLarge,
    ServiceUnavailable,
    body_too_large,
    error_response,
    json_error,
)
from modelservice_runtime.http_protocol import Reply
from modelservice_runtime.metrics import CONTENT_TYPE, Metrics
from modelservice_runtime.model import OnnxModel
from modelservice_runtime.protocol import v1, v2
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.server")

Headers = Mapping[str, str]  # request headers, names in lower case
Route = Callable[..., Awaitable[Reply]]  # (headers, body, **path params) -> Reply

JSON = "application/json"
HEARTBEAT_S = 1.0  # see create_app(heartbeat=...)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": {"type": "object", "required": ["inputs"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": {"type": "object", "required": ["instances"]}}},
    }
}


def _json(obj: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status_code, media_type=JSON)


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


async def answer_asgi(
    request: Request,
    answer: Callable[[Route, Headers, bytes, dict[str, Any]], Awaitable[Reply]],
    route: Route,
    params: dict[str, Any],
    limit: int,
) -> Response:
    """An inference route's answer for an ASGI request (see RuntimeApp)."""
    try:
        body = await read_body(request, limit)
    except ModelServiceError as e:
        return json_error(e.status_code, e.message, e.headers)
    reply = await answer(route, request.headers, body, params)
    return Response(reply.body, reply.status, headers=reply.headers, media_type=reply.content_type)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, JSON, orjson.dumps({"error": message}), headers)


def create_app(
    settings: Settings,
    *,
    on_fatal: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
    model: OnnxModel | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app. The model loads in the background at startup: live at once, ready
    once loaded and warmed. `on_fatal` is called if loading fails (serve exits then).
    A worker of a multi-process server passes its shared `metrics`, an already loaded
    `model` (it listens only once ready) and a `heartbeat` to call from the event loop
    every HEARTBEAT_S, so its supervisor sees if the loop is stuck."""
    metrics = metrics if metrics is not None else Metrics()
    dataplane = DataPlane(settings, metrics)
    auth = BearerAuth(settings.auth_token)
    limit = settings.max_request_bytes

    async def load() -> None:
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
        dataplane.register(loaded)
        # Startup objects (onnxruntime, numpy, the app) never die: keep them out of the
        # collector's scans so GC pauses stay short under load (better tail latency).
        gc.collect()
        gc.freeze()
        log.info("model %s is ready", settings.name)

    async def beat(send: Callable[[], None]) -> None:
        while True:
            send()
            await asyncio.sleep(HEARTBEAT_S)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(load())]
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
    app.state.dataplane = dataplane
    app.state.settings = settings

    # One handler for our errors; framework errors get the same {"error": ...} shape.
    app.add_exception_handler(ModelServiceError, error_response)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        where = f"{request.method} {request.url.path}"
        message = {
            404: f"no endpoint {where}; see /docs for the API",
            405: f"method not allowed: {where}; see /docs for the API",
        }.get(exc.status_code, str(exc.detail))
        return json_error(exc.status_code, message, getattr(exc, "headers", None))

    async def validation_error(_r: Request, exc: Exception) -> Response:
        return json_error(400, f"invalid request: {exc}")

    async def unexpected_error(_r: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return json_error(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)

    # --- inference ----------------------------------------------------------------------
    # The inference routes take the request headers (names in lower case) and the whole
    # body, and return a Reply. The HTTP protocol calls them directly (RuntimeApp.direct);
    # any other ASGI server, and the test client, reach them through RuntimeApp._fast.

    async def infer(
        entry: ModelEntry,
        parse: Callable[[bytes], tuple[dict[str, np.ndarray], Any]],
        build: Callable[[dict[str, np.ndarray], Any], Reply],
        body: bytes,
    ) -> Reply:
        started = time.perf_counter()
        m = entry.metrics
        m.request_started()
        try:
            inputs, context = parse(body)
            result = await dataplane.infer(entry, inputs)
            reply = build(result.outputs, context)
        except BaseException:
            m.on_request(False, time.perf_counter() - started, 0.0, 0.0)
            raise
        m.on_request(True, time.perf_counter() - started, result.queue_s, result.compute_s)
        return reply

    def v2_infer(
        headers: Headers, entry: ModelEntry, body: bytes, doc: Any = None
    ) -> Awaitable[Reply]:
        header_length = headers.get(v2.HEADER_LENGTH)

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], v2.InferRequest]:
            req = v2.parse_infer_request(body, header_length, doc)
            if req.outputs is not None:
                entry.model.check_outputs([o.name for o in req.outputs])
            return req.inputs, req

        def build(outputs: dict[str, np.ndarray], req: v2.InferRequest) -> Reply:
            content, hlen = v2.build_infer_response(
                entry.name,
                entry.version,
                outputs,
                req.outputs,
                request_id=req.id,
                binary_output=req.binary_output,
            )
            if hlen is None:
                return Reply(200, JSON, content)
            return Reply(
                200,
                "application/octet-stream",
                content,
                {"Inference-Header-Content-Length": str(hlen)},
            )

        return infer(entry, parse, build, body)

    def v1_predict(entry: ModelEntry, body: bytes, doc: Any = None) -> Awaitable[Reply]:
        specs = [(s.name, s.dtype) for s in entry.model.inputs]

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], None]:
            return v1.parse_predict_request(body, specs, doc), None

        def build(outputs: dict[str, np.ndarray], _ctx: None) -> Reply:
            return Reply(200, JSON, v1.build_predict_response(outputs))

        return infer(entry, parse, build, body)

    async def v2_infer_route(
        headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        return await v2_infer(headers, dataplane.get(model_name, model_version), body)

    async def v1_predict_route(headers: Headers, body: bytes, model_name: str) -> Reply:
        return await v1_predict(dataplane.get(model_name), body)

    async def predict_route(headers: Headers, body: bytes) -> Reply:
        """The default model. A V2 body (`inputs` as a list of named tensors, or binary with
        Inference-Header-Content-Length) gets a V2 answer; otherwise V1 instances."""
        entry = dataplane.default()
        if v2.HEADER_LENGTH in headers:
            return await v2_infer(headers, entry, body)
        try:  # parsed once here, and handed on to whichever protocol it turns out to be
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await v1_predict(entry, body)  # which names the JSON error
        if _is_v2(doc):
            return await v2_infer(headers, entry, body, doc)
        return await v1_predict(entry, body, doc)

    async def answer(route: Route, headers: Headers, body: bytes, params: dict[str, Any]) -> Reply:
        """Authenticate, inflate the body and run `route`; any error becomes its reply."""
        try:
            auth.check(headers)
            body = decode_body(body, headers.get("content-encoding"), limit)
            return await route(headers, body, **params)
        except ModelServiceError as e:
            return error_reply(e.status_code, e.message, e.headers)
        except Exception as e:
            log.exception("unexpected error in %s", route.__name__, exc_info=e)
            return error_reply(500, f"internal error: {type(e).__name__}")

    # --- V2 -----------------------------------------------------------------------------

    @app.get("/v2/health/live", tags=["health"])
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    async def ready() -> Response:
        if dataplane.ready():
            return _json({"ready": True})
        if dataplane.draining:
            reason = "the server is shutting down"
        elif dataplane.load_error:
            reason = f"the model failed to load: {dataplane.load_error}"
        else:
            reason = "the model is still loading"
        return json_error(503, reason)

    @app.get("/v2", tags=["v2"])
    async def server_metadata(request: Request) -> Response:
        auth.check(request.headers)
        return _json(dataplane.server_metadata())

    @app.get("/v2/models/{model_name}", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=["v2"])
    async def model_metadata(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request.headers)
        return _json(dataplane.model_metadata(dataplane.get(model_name, model_version)))

    @app.get("/v2/models/{model_name}/config", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}/config", tags=["v2"])
    async def model_config(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request.headers)
        return _json(dataplane.model_config(dataplane.get(model_name, model_version)))

    @app.get("/v2/models/{model_name}/ready", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=["v2"])
    async def model_ready(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request.headers)
        entry = dataplane.get(model_name, model_version)
        if dataplane.draining:
            raise ServiceUnavailable("the server is shutting down")
        return _json({"name": entry.name, "ready": True})

    @app.post("/v2/models/{model_name}/infer", tags=["v2"], openapi_extra=_INFER_BODY)
    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        tags=["v2"],
        openapi_extra=_INFER_BODY,
    )
    async def model_infer(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        params = {"model_name": model_name, "model_version": model_version}
        return await answer_asgi(request, answer, v2_infer_route, params, limit)

    # --- V1 and /predict ----------------------------------------------------------------

    @app.get("/v1/models", tags=["v1"])
    async def v1_models(request: Request) -> Response:
        auth.check(request.headers)
        return _json({"models": dataplane.names()})

    @app.get("/v1/models/{model_name}", tags=["v1"])
    async def v1_model(request: Request, model_name: str) -> Response:
        auth.check(request.headers)
        entry = dataplane.get(model_name)
        return _json({"name": entry.name, "ready": not dataplane.draining})

    @app.post("/v1/models/{model_name}:predict", tags=["v1"], openapi_extra=_PREDICT_BODY)
    async def v1_model_predict(request: Request, model_name: str) -> Response:
        params = {"model_name": model_name}
        return await answer_asgi(request, answer, v1_predict_route, params, limit)

    @app.post("/predict", tags=["v1"], openapi_extra=_INFER_BODY)
    async def predict(request: Request) -> Response:
        """The default model. A V2 body (`inputs` as a list of named tensors, or binary with
        Inference-Header-Content-Length) gets a V2 answer; otherwise V1 instances."""
        return await answer_asgi(request, answer, predict_route, {}, limit)

    # --- metrics ------------------------------------------------------------------------

    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.answer = answer
    app.inference_routes = [
        (_V2_INFER, v2_infer_route),
        (_V1_PREDICT, v1_predict_route),
        (_PREDICT, predict_route),
    ]
    return app


_V2_INFER = re.compile(
    r"/v2/models/(?P<model_name>[^/]+)(?:/versions/(?P<model_version>[^/]+))?/infer"
)
_V1_PREDICT = re.compile(r"/v1/models/(?P<model_name>[^/]+):predict")
_PREDICT = re.compile(r"/predict")


class RuntimeApp(FastAPI):
    """FastAPI, plus a direct path for the inference POSTs.

    Inference is the hot path: FastAPI's middleware stack, routing and dependency solving
    cost more per request than the MLP's whole inference. POSTs to an inference path skip
    them: `direct` serves them for the HTTP protocol (http_protocol.py) without ASGI at
    all, and under any other ASGI server (or the test client) `__call__` sends them
    straight to the same route. The FastAPI routes for the same paths only document them
    in OpenAPI. Everything else is plain FastAPI.
    """

    answer: Callable[[Route, Headers, bytes, dict[str, Any]], Awaitable[Reply]]
    inference_routes: list[tuple[re.Pattern[str], Route]] = []

    def _inference_route(self, method: str, path: str) -> tuple[Route, dict[str, Any]] | None:
        if method == "POST":
            for pattern, route in self.inference_routes:
                match = pattern.fullmatch(path)
                if match is not None:
                    return route, match.groupdict()
        return None

    def direct(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Awaitable[Reply] | None:
        """The answer to an inference request, or None for a request the app must see."""
        found = self._inference_route(method, path)
        if found is None:
            return None
        route, params = found
        named = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        if self.state.dataplane.draining:
            return self._closing(self.answer(route, named, body, params))
        return self.answer(route, named, body, params)

    @staticmethod
    async def _closing(answering: Awaitable[Reply]) -> Reply:
        """See _closing_connection."""
        reply = await answering
        return reply._replace(headers={**(reply.headers or {}), "Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.dataplane.draining:
            send = _closing_connection(send)
        if scope["type"] == "http":
            found = self._inference_route(scope["method"], scope["path"])
            if found is not None:
                await self._fast(*found, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _fast(
        self, route: Route, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["app"] = self
        request = Request(scope, receive)
        limit = self.state.settings.max_request_bytes
        try:
            response = await answer_asgi(request, self.answer, route, params, limit)
        except ClientDisconnect:
            return  # nobody left to answer
        await response(scope, receive, send)


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


def _is_v2(doc: Any) -> bool:
    """A V2 request names the datatype of each input; V1 `inputs` never do."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(isinstance(t, dict) and "datatype" in t for t in inputs)
    )
