"""The endpoints, one class per protocol over the data plane, and the one route table.

Each endpoint takes the request headers (names in lower case), the whole body and the path
parameters, and returns a `Reply`; it knows nothing of FastAPI or of the HTTP protocol.
The wire formats are pure functions in `protocol/` (v1.py, v2.py): an endpoint parses with
them, asks the data plane (dataplane.py, which batches through batching.py), and builds its
answer with them. `route_table()` lists every route once; app.py builds both the FastAPI
routes and the direct router of the HTTP protocol from it. The shape is KServe's
`V1Endpoints`/`V2Endpoints` over its `DataPlane`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
from modelservice_runtime.errors import ServiceUnavailable, error_body
from modelservice_runtime.serving.dataplane import DataPlane, ModelEntry
from modelservice_runtime.serving.metrics import CONTENT_TYPE, Metrics
from modelservice_runtime.serving.openai_endpoints import OpenAIEndpoints, openai_routes
from modelservice_runtime.serving.protocol import v1, v2

Headers = Mapping[str, str]  # request headers, names in lower case
JSON = "application/json"


class Reply(NamedTuple):
    """An endpoint's answer: what the app sends as a Response, or the HTTP protocol writes
    itself for a direct route."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] | None = None
    # A streamed answer (server-sent events): its parts, sent as they come (app.py).
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, obj: Any) -> Reply:
        return cls(200, JSON, orjson.dumps(obj))

    @classmethod
    def error(cls, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        """Every error answer, whichever way it is sent: `{"error": "<message>"}`."""
        return cls(status, JSON, error_body(message), headers or None)


Endpoint = Callable[..., Awaitable[Reply]]  # (headers, body, **path params) -> Reply

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


@dataclass(frozen=True)
class Route:
    """One route: `path` is a FastAPI path template (`{model_name}`)."""

    method: str
    path: str
    endpoint: Endpoint
    tag: str
    auth: bool = True  # health probes and /metrics stay open (auth.py)
    openapi: dict[str, Any] | None = None  # extra OpenAPI for the request body
    streams: bool = False  # may answer with a stream: served through ASGI only

    @property
    def direct(self) -> bool:
        """POSTs are the inference traffic: the HTTP protocol answers them without ASGI,
        with the whole body (transport/http_protocol.py); streamed answers go through ASGI."""
        return self.method == "POST" and not self.streams


async def _infer(
    dataplane: DataPlane,
    entry: ModelEntry,
    parse: Callable[[bytes], tuple[dict[str, np.ndarray], Any]],
    build: Callable[[dict[str, np.ndarray], Any], Reply],
    body: bytes,
) -> Reply:
    """Parse, infer, build: timed and counted as one inference request."""
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


class V2Endpoints:
    """Open Inference Protocol (KServe V2): health, metadata and infer."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def live(self, headers: Headers, body: bytes) -> Reply:
        return Reply.json({"live": True})

    async def ready(self, headers: Headers, body: bytes) -> Reply:
        dp = self.dataplane
        if dp.ready():
            return Reply.json({"ready": True})
        if dp.draining:
            reason = "the server is shutting down"
        elif dp.load_error:
            reason = f"the model failed to load: {dp.load_error}"
        else:
            reason = "the model is still loading"
        return Reply.error(503, reason)

    async def server_metadata(self, headers: Headers, body: bytes) -> Reply:
        return Reply.json(self.dataplane.server_metadata())

    async def model_metadata(
        self, headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        dp = self.dataplane
        return Reply.json(dp.model_metadata(dp.get(model_name, model_version)))

    async def model_config(
        self, headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        dp = self.dataplane
        return Reply.json(dp.model_config(dp.get(model_name, model_version)))

    async def model_ready(
        self, headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        entry = self.dataplane.get(model_name, model_version)
        if self.dataplane.draining:
            raise ServiceUnavailable("the server is shutting down")
        return Reply.json({"name": entry.name, "ready": True})

    async def infer(
        self, headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        return await self.infer_on(self.dataplane.get(model_name, model_version), headers, body)

    def infer_on(
        self, entry: ModelEntry, headers: Headers, body: bytes, doc: Any = None
    ) -> Awaitable[Reply]:
        """A V2 infer request for `entry`; `doc`: the body already parsed as JSON."""
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

        return _infer(self.dataplane, entry, parse, build, body)


class V1Endpoints:
    """KServe V1: the model list, a model's status, predict; and `/predict` for the default
    model in either protocol."""

    def __init__(self, dataplane: DataPlane, v2_endpoints: V2Endpoints) -> None:
        self.dataplane = dataplane
        self.v2 = v2_endpoints

    async def models(self, headers: Headers, body: bytes) -> Reply:
        dp = self.dataplane
        if dp.generative is not None or dp.embedding is not None:  # OpenAI's shape for them
            return await OpenAIEndpoints(dp).models(headers, body)
        return Reply.json({"models": self.dataplane.names()})

    async def model(self, headers: Headers, body: bytes, model_name: str) -> Reply:
        entry = self.dataplane.get(model_name)
        return Reply.json({"name": entry.name, "ready": not self.dataplane.draining})

    async def predict(self, headers: Headers, body: bytes, model_name: str) -> Reply:
        return await self.predict_on(self.dataplane.get(model_name), body)

    def predict_on(self, entry: ModelEntry, body: bytes, doc: Any = None) -> Awaitable[Reply]:
        specs = [(s.name, s.dtype) for s in entry.model.inputs]

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], None]:
            return v1.parse_predict_request(body, specs, doc), None

        def build(outputs: dict[str, np.ndarray], _ctx: None) -> Reply:
            return Reply(200, JSON, v1.build_predict_response(outputs))

        return _infer(self.dataplane, entry, parse, build, body)

    async def predict_default(self, headers: Headers, body: bytes) -> Reply:
        """The default model. A V2 body (`inputs` as a list of named tensors, or binary with
        Inference-Header-Content-Length) gets a V2 answer; otherwise V1 instances."""
        entry = self.dataplane.default()
        if v2.HEADER_LENGTH in headers:
            return await self.v2.infer_on(entry, headers, body)
        try:  # parsed once here, and handed on to whichever protocol it turns out to be
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return await self.predict_on(entry, body)  # which names the JSON error
        if _is_v2(doc):
            return await self.v2.infer_on(entry, headers, body, doc)
        return await self.predict_on(entry, body, doc)


def _is_v2(doc: Any) -> bool:
    """A V2 request names the datatype of each input; V1 `inputs` never do."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    return (
        isinstance(inputs, list)
        and bool(inputs)
        and all(isinstance(t, dict) and "datatype" in t for t in inputs)
    )


def route_table(dataplane: DataPlane, metrics: Metrics) -> list[Route]:
    """Every route of the runtime, once."""
    # Here, not at the top: explain_endpoints.py builds on this module's Reply and Headers.
    from modelservice_runtime.serving.embeddings_endpoints import embedding_routes
    from modelservice_runtime.serving.explain_endpoints import ExplainEndpoints
    from modelservice_runtime.serving.explaining import ExplainPlane

    v2_ = V2Endpoints(dataplane)
    v1_ = V1Endpoints(dataplane, v2_)
    explain = ExplainEndpoints(dataplane, ExplainPlane(dataplane.settings))
    dataplane.on_close.append(explain.explainer.close)

    async def prometheus(headers: Headers, body: bytes) -> Reply:
        return Reply(200, CONTENT_TYPE, metrics.render())

    model = "/v2/models/{model_name}"
    version = "/v2/models/{model_name}/versions/{model_version}"
    return [
        Route("GET", "/v2/health/live", v2_.live, "health", auth=False),
        Route("GET", "/v2/health/ready", v2_.ready, "health", auth=False),
        Route("GET", "/v2", v2_.server_metadata, "v2"),
        Route("GET", model, v2_.model_metadata, "v2"),
        Route("GET", version, v2_.model_metadata, "v2"),
        Route("GET", f"{model}/config", v2_.model_config, "v2"),
        Route("GET", f"{version}/config", v2_.model_config, "v2"),
        Route("GET", f"{model}/ready", v2_.model_ready, "v2"),
        Route("GET", f"{version}/ready", v2_.model_ready, "v2"),
        Route("POST", f"{model}/infer", v2_.infer, "v2", openapi=_INFER_BODY),
        Route("POST", f"{version}/infer", v2_.infer, "v2", openapi=_INFER_BODY),
        Route("POST", f"{model}/explain", explain.explain_v2, "explain", openapi=_INFER_BODY),
        Route("POST", f"{version}/explain", explain.explain_v2, "explain", openapi=_INFER_BODY),
        Route("GET", "/v1/models", v1_.models, "v1"),
        Route("GET", "/v1/models/{model_name}", v1_.model, "v1"),
        Route("POST", "/v1/models/{model_name}:predict", v1_.predict, "v1", openapi=_PREDICT_BODY),
        Route(
            "POST",
            "/v1/models/{model_name}:explain",
            explain.explain_v1,
            "explain",
            openapi=_PREDICT_BODY,
        ),
        Route("POST", "/predict", v1_.predict_default, "v1", openapi=_INFER_BODY),
        Route("GET", "/metrics", prometheus, "metrics", auth=False),
        *openai_routes(dataplane),
        *embedding_routes(dataplane),
    ]
