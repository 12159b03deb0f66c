"""The V2 and V1 endpoints, one class per protocol over the data plane.

Each endpoint takes the request headers (names in lower case), the whole body and the path
parameters, and returns a `Reply` (reply.py); it knows nothing of FastAPI or of the HTTP
protocol. The wire formats are pure functions in `protocol/` (v1.py, v2.py): an endpoint
parses with them, asks the data plane (dataplane.py, which batches through batching.py and
records the request metrics), and builds its answer with them. The shape is KServe's
`V1Endpoints`/`V2Endpoints` over its `DataPlane`; routes.py lists the routes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np
import orjson
from modelservice_runtime.errors import ServiceUnavailable
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.entries import ModelEntry
from modelservice_runtime.serving.protocol import v1, v2
from modelservice_runtime.serving.reply import JSON, Headers, Reply


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
                entry.check_outputs([o.name for o in req.outputs])
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

        return self.dataplane.run_request(entry, parse, build, body)


class V1Endpoints:
    """KServe V1: the model list, a model's status, predict; and `/predict` for the default
    model in either protocol."""

    def __init__(self, dataplane: DataPlane, v2_endpoints: V2Endpoints) -> None:
        self.dataplane = dataplane
        self.v2 = v2_endpoints

    async def models(self, headers: Headers, body: bytes) -> Reply:
        return Reply.json({"models": self.dataplane.names()})

    async def model(self, headers: Headers, body: bytes, model_name: str) -> Reply:
        entry = self.dataplane.get(model_name)
        return Reply.json({"name": entry.name, "ready": not self.dataplane.draining})

    async def predict(self, headers: Headers, body: bytes, model_name: str) -> Reply:
        return await self.predict_on(self.dataplane.get(model_name), body)

    def predict_on(self, entry: ModelEntry, body: bytes, doc: Any = None) -> Awaitable[Reply]:
        specs = entry.input_specs()

        def parse(body: bytes) -> tuple[dict[str, np.ndarray], None]:
            return v1.parse_predict_request(body, specs, doc), None

        def build(outputs: dict[str, np.ndarray], _ctx: None) -> Reply:
            return Reply(200, JSON, v1.build_predict_response(outputs))

        return self.dataplane.run_request(entry, parse, build, body)

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
