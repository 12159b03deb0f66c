"""POST /v1/embeddings (and /openai/v1/embeddings): OpenAI's embeddings over an ONNX encoder.
Parsing and answers are protocol/embeddings.py's; tokenizing and pooling embedding.py's; the
encoder runs through the data plane, so its model runs are batched with other requests'
(serving/batching.py) and counted like every inference.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from modelservice_runtime.errors import NotFound
from modelservice_runtime.serving.auth import charge_tokens
from modelservice_runtime.serving.embedding import EmbeddingModel, truncate
from modelservice_runtime.serving.protocol import embeddings
from modelservice_runtime.serving.reply import JSON, Headers, Reply

if TYPE_CHECKING:
    from modelservice_runtime.serving.dataplane import DataPlane


class EmbeddingEndpoints:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def _model(self) -> EmbeddingModel:
        dp = self.dataplane
        model = dp.embedding
        if model is None:
            dp.default()  # 503 while loading, 404 naming the model otherwise
            raise NotFound(
                "this server serves no embedding model; /v1/embeddings needs an encoder folder "
                "(tokenizer.json, model.onnx, 1_Pooling/config.json) or --format embedding"
            )
        return model

    async def embeddings(self, headers: Headers, body: bytes) -> Reply:
        """OpenAI embeddings: `input` (string, strings, token ids), `encoding_format`
        float|base64, `dimensions` (the first N components, renormalised)."""
        model = self._model()
        dp = self.dataplane
        entry = dp.default()
        m = entry.metrics
        started = time.perf_counter()
        m.request_started()
        try:
            req = embeddings.parse_request(body, model.dimensions)
            if req.model is not None and req.model != entry.name:
                raise NotFound(
                    f"model {req.model!r} not found; this server serves [{entry.name!r}]"
                )
            encoded = model.encode(req.inputs)
            charge_tokens(encoded.tokens)
            result = await dp.infer(entry, encoded.feeds)
            vectors = model.embed(result.outputs, encoded.mask)
            if req.dimensions is not None and req.dimensions < vectors.shape[1]:
                vectors = truncate(vectors, req.dimensions, model.normalize)
            content = embeddings.response(vectors, entry.name, encoded.tokens, req.base64)
        except BaseException:
            m.on_request(False, time.perf_counter() - started, 0.0, 0.0)
            raise
        m.on_request(True, time.perf_counter() - started, result.queue_s, result.compute_s)
        return Reply(200, JSON, content)
