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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    error_response,
    json_error,
)
from modelservice_runtime.metrics import CONTENT_TYPE, Metrics
from modelservice_runtime.model import OnnxModel
from modelservice_runtime.protocol import v1, v2
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.server")

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
    """The body, refusing (413) more than `limit` bytes: by Content-Length before reading,
    and by counting while reading (chunked bodies have no Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length must be an integer, got {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(
                f"request body is {size} bytes; the limit is {limit} bytes (--max-request-bytes)"
            )
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
            raise PayloadTooLarge(
                f"request body is over the limit of {limit} bytes (--max-request-bytes)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding")
    if encoding is None or encoding == "identity":
        return body
    return _decompress(body, encoding, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient's request_compression_algorithm), with the
    size limit applied to the inflated body so a small bomb cannot take the memory."""
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

    # --- shared inference path ----------------------------------------------------------

    async def infer(
        request: Request,
        entry: ModelEntry,
        parse: Callable[[bytes], tuple[dict[str, np.ndarray], Any]],
        build: Callable[[dict[str, np.ndarray], Any], Response],
        body: bytes | None = None,
    ) -> Response:
        started = time.perf_counter()
        m = entry.metrics
        m.request_started()
        try:
            if body is None:
                body = await read_body(request, limit)
            inputs, context = parse(body)
            result = await dataplane.infer(entry, inputs)
            response = build(result.outputs, context)
        except BaseException:
            m.on_request(False, time.perf_counter() - started, 0.0, 0.0)
            raise
        m.on_request(True, time.perf_counter() - started, result.queue_s, result.compute_s)
        return response

    def v2_infer(request: Request, entry: ModelEntry, body: bytes | None = None) -> Any:
        header_length = request.headers.get(v2.HEADER_LENGTH)

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], v2.InferRequest]:
            req = v2.parse_infer_request(body, header_length)
            if req.outputs is not None:
                entry.model.check_outputs([o.name for o in req.outputs])
            return req.inputs, req

        def build(outputs: dict[str, np.ndarray], req: v2.InferRequest) -> Response:
            content, hlen = v2.build_infer_response(
                entry.name,
                entry.version,
                outputs,
                req.outputs,
                request_id=req.id,
                binary_output=req.binary_output,
            )
            if hlen is None:
                return Response(content, media_type=JSON)
            return Response(
                content,
                media_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(hlen)},
            )

        return infer(request, entry, parse, build, body)

    def v1_predict(request: Request, entry: ModelEntry, body: bytes | None = None) -> Any:
        specs = [(s.name, s.dtype) for s in entry.model.inputs]

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], None]:
            return v1.parse_predict_request(body, specs), None

        def build(outputs: dict[str, np.ndarray], _ctx: None) -> Response:
            return Response(v1.build_predict_response(outputs), media_type=JSON)

        return infer(request, entry, parse, build, body)

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
        auth.check(request)
        return _json(dataplane.server_metadata())

    @app.get("/v2/models/{model_name}", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=["v2"])
    async def model_metadata(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request)
        return _json(dataplane.model_metadata(dataplane.get(model_name, model_version)))

    @app.get("/v2/models/{model_name}/config", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}/config", tags=["v2"])
    async def model_config(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request)
        return _json(dataplane.model_config(dataplane.get(model_name, model_version)))

    @app.get("/v2/models/{model_name}/ready", tags=["v2"])
    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=["v2"])
    async def model_ready(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        auth.check(request)
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
        auth.check(request)
        return await v2_infer(request, dataplane.get(model_name, model_version))

    # --- V1 and /predict ----------------------------------------------------------------

    @app.get("/v1/models", tags=["v1"])
    async def v1_models(request: Request) -> Response:
        auth.check(request)
        return _json({"models": dataplane.names()})

    @app.get("/v1/models/{model_name}", tags=["v1"])
    async def v1_model(request: Request, model_name: str) -> Response:
        auth.check(request)
        entry = dataplane.get(model_name)
        return _json({"name": entry.name, "ready": not dataplane.draining})

    @app.post("/v1/models/{model_name}:predict", tags=["v1"], openapi_extra=_PREDICT_BODY)
    async def v1_model_predict(request: Request, model_name: str) -> Response:
        auth.check(request)
        return await v1_predict(request, dataplane.get(model_name))

    @app.post("/predict", tags=["v1"], openapi_extra=_INFER_BODY)
    async def predict(request: Request) -> Response:
        """The default model. A V2 body (`inputs` as a list of named tensors, or binary with
        Inference-Header-Content-Length) gets a V2 answer; otherwise V1 instances."""
        auth.check(request)
        entry = dataplane.default()
        if v2.HEADER_LENGTH in request.headers:
            return await v2_infer(request, entry)
        body = await read_body(request, limit)
        if _looks_like_v2(body):
            return await v2_infer(request, entry, body)
        return await v1_predict(request, entry, body)

    # --- metrics ------------------------------------------------------------------------

    @app.get("/metrics", tags=["metrics"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # The same handlers, reached without the framework's middleware and dependency layers.
    app.fast_routes = [
        (_V2_INFER, model_infer),
        (_V1_PREDICT, v1_model_predict),
        (_PREDICT, predict),
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
    cost more per request than the MLP's whole inference. POSTs to an inference path go
    straight to their handler (the same function FastAPI routes, documented in OpenAPI);
    errors get the same one handler's {"error": ...}. Everything else is plain FastAPI.
    """

    fast_routes: list[tuple[re.Pattern[str], Callable[..., Awaitable[Response]]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.dataplane.draining:
            send = _closing_connection(send)
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for pattern, handler in self.fast_routes:
                match = pattern.fullmatch(path)
                if match is not None:
                    await self._fast(handler, match.groupdict(), scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _fast(
        self,
        handler: Callable[..., Awaitable[Response]],
        params: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        scope["app"] = self
        try:
            response = await handler(Request(scope, receive), **params)
        except ClientDisconnect:
            return  # nobody left to answer
        except ModelServiceError as e:
            response = json_error(e.status_code, e.message, e.headers)
        except Exception as e:
            log.exception("unexpected error in %s", scope["path"], exc_info=e)
            response = json_error(500, f"internal error: {type(e).__name__}")
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


def _looks_like_v2(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(isinstance(t, dict) and "datatype" in t for t in inputs)
    )
