"""The explain endpoints: KServe V1 `:explain` and the V2 `explain` extension.

Both parse the request with their protocol's own parser (protocol/v1.py, protocol/v2.py,
so instances read exactly as predict and infer read them), hand the instances and the
request's `parameters` to the explain plane (explaining.py), and answer with the prediction
as their protocol gives it plus one explanation per instance:

- V1: `{"predictions": [...], "explanations": [...]}` (predictions as `:predict` answers).
- V2: the infer response's `model_name`, `model_version`, `id`, `outputs` (JSON), plus
  `explanations`.
"""

from __future__ import annotations

from typing import Any

import orjson
from modelservice_runtime.errors import load_json
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.explaining import Explained, ExplainPlane
from modelservice_runtime.serving.protocol import v1, v2
from modelservice_runtime.serving.reply import JSON, Headers, Reply

# V2 request parameters the V2 protocol owns: explanations always answer in JSON.
_V2_OWN = ("binary_data_output",)


def _explanations(explained: Explained) -> list[dict[str, Any]]:
    return [e.to_json(explained.baseline) for e in explained.result.explanations]


class ExplainEndpoints:
    """POST /v1/models/{m}:explain and /v2/models/{m}[/versions/{v}]/explain."""

    def __init__(self, dataplane: DataPlane, explainer: ExplainPlane) -> None:
        self.dataplane = dataplane
        self.explainer = explainer

    async def explain_v1(self, headers: Headers, body: bytes, model_name: str) -> Reply:
        """KServe V1: `{"instances": [...], "parameters": {...}}` -> predictions and
        explanations (docs/explain.md)."""
        self.explainer.check_enabled(model_name)
        entry = self.dataplane.get(model_name)
        doc = load_json(body)
        specs = entry.input_specs()
        inputs = v1.parse_predict_request(body, specs, doc)
        instances = self.explainer.instances(entry, inputs)
        explained = await self.explainer.explain(entry, instances, doc.get("parameters"))
        predictions = orjson.loads(v1.build_predict_response(explained.result.outputs))
        predictions["explanations"] = _explanations(explained)
        return Reply(200, JSON, orjson.dumps(predictions))

    async def explain_v2(
        self, headers: Headers, body: bytes, model_name: str, model_version: str | None = None
    ) -> Reply:
        """V2 `inputs` with the explain parameters in the request's `parameters` -> the
        infer response plus explanations (docs/explain.md)."""
        self.explainer.check_enabled(model_name)
        entry = self.dataplane.get(model_name, model_version)
        header_length = headers.get(v2.HEADER_LENGTH)
        req = v2.parse_infer_request(body, header_length)  # binary tensor data too
        hlen = int(header_length) if header_length is not None else len(body)
        params = load_json(body[:hlen]).get("parameters")
        instances = self.explainer.instances(entry, req.inputs)
        explained = await self.explainer.explain(entry, instances, params, ignore=_V2_OWN)
        requested = None
        if req.outputs is not None:  # as asked, but in JSON
            entry.check_outputs([o.name for o in req.outputs])
            requested = [v2.RequestedOutput(o.name, False) for o in req.outputs]
        content, _ = v2.build_infer_response(
            entry.name, entry.version, explained.result.outputs, requested, request_id=req.id
        )
        answer = orjson.loads(content)
        answer["explanations"] = _explanations(explained)
        return Reply(200, JSON, orjson.dumps(answer))
