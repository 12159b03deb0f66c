"""The one route table: every route of the runtime, once.

app.py builds both the FastAPI routes and the direct router of the HTTP protocol from it.
Each route names an endpoint method of one protocol's class (endpoints.py for V2 and V1,
explain_endpoints.py, openai_endpoints.py, embeddings_endpoints.py); the classes share the
one data plane.
"""

from __future__ import annotations

from modelservice_cli.runtime_paths import HEALTH_LIVE, HEALTH_READY, METRICS
from modelservice_runtime.serving.dataplane import DataPlane
from modelservice_runtime.serving.embeddings_endpoints import EmbeddingEndpoints
from modelservice_runtime.serving.endpoints import V1Endpoints, V2Endpoints
from modelservice_runtime.serving.explain_endpoints import ExplainEndpoints
from modelservice_runtime.serving.explaining import ExplainPlane
from modelservice_runtime.serving.metrics import CONTENT_TYPE, Metrics
from modelservice_runtime.serving.openai_endpoints import OpenAIEndpoints
from modelservice_runtime.serving.reply import JSON, Headers, Reply, Route

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
OPENAI_PREFIXES = ("/v1", "/openai/v1")


def route_table(dataplane: DataPlane, metrics: Metrics) -> list[Route]:
    """Every route of the runtime, once."""
    v2_ = V2Endpoints(dataplane)
    v1_ = V1Endpoints(dataplane, v2_)
    explain = ExplainEndpoints(dataplane, ExplainPlane(dataplane.settings))
    dataplane.on_close.append(explain.explainer.close)
    openai_ = OpenAIEndpoints(dataplane)
    embeddings_ = EmbeddingEndpoints(dataplane)

    async def prometheus(headers: Headers, body: bytes) -> Reply:
        return Reply(200, CONTENT_TYPE, metrics.render())

    async def models(headers: Headers, body: bytes) -> Reply:
        """GET /v1/models: OpenAI's list for a language model, KServe V1's otherwise (the
        model loads after the routes exist, so this is decided per request)."""
        if dataplane.generative is not None or dataplane.embedding is not None:
            return await openai_.models(headers, body)
        return await v1_.models(headers, body)

    model = "/v2/models/{model_name}"
    version = "/v2/models/{model_name}/versions/{model_version}"
    routes = [
        Route("GET", HEALTH_LIVE, v2_.live, "health", auth=False),
        Route("GET", HEALTH_READY, v2_.ready, "health", auth=False),
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
        Route("GET", "/v1/models", models, "v1"),
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
        Route("GET", METRICS, prometheus, "metrics", auth=False),
    ]
    for prefix in OPENAI_PREFIXES:
        routes += [
            Route("POST", f"{prefix}/completions", openai_.completions, "openai", streams=True),
            Route(
                "POST",
                f"{prefix}/chat/completions",
                openai_.chat_completions,
                "openai",
                streams=True,
            ),
        ]
    routes += [
        Route("POST", f"{prefix}/embeddings", embeddings_.embeddings, "openai")
        for prefix in OPENAI_PREFIXES
    ]
    routes.append(Route("GET", "/openai/v1/models", openai_.models, "openai"))
    return routes
