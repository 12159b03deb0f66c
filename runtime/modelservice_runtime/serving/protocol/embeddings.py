"""OpenAI's embeddings wire format: pure functions from a body to a request and from vectors
to a body. Fields as OpenAI's API reference has them: `input` (a string, a list of strings,
a list of token ids, or a list of such lists), `model`, `encoding_format` (float | base64:
little-endian float32, what the openai client asks for by default and decodes),
`dimensions`, `user`. Anything else is a 400 naming it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from modelservice_runtime.errors import BadRequest

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[str] | list[list[int]]  # texts, or token id lists
    model: str | None
    base64: bool
    dimensions: int | None


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def parse_request(body: bytes, max_dimensions: int | None) -> EmbeddingRequest:
    """The request in `body`; BadRequest naming the field and what was expected."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    for name in doc:
        if name not in _FIELDS:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise BadRequest(f"unknown parameter {shown!r}; supported: {sorted(_FIELDS)}")
    value = doc.get("input")
    inputs: list[Any]
    if isinstance(value, str) or _is_ids(value):
        inputs = [value]
    elif (
        isinstance(value, list)
        and value
        and (all(isinstance(v, str) for v in value) or all(_is_ids(v) for v in value))
    ):
        inputs = value
    else:
        raise BadRequest(
            "input must be a non-empty string, a list of strings, a list of token ids or a "
            "list of token id lists"
        )
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"input must hold at most {MAX_INPUTS} items, got {len(inputs)}")
    if isinstance(inputs[0], str) and any(not s for s in inputs):
        raise BadRequest("input strings must not be empty")
    fmt = doc.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise BadRequest(f"encoding_format must be 'float' or 'base64', got {fmt!r}"[:200])
    dims = doc.get("dimensions")
    if dims is not None:
        hi = max_dimensions or 2**31 - 1
        if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= hi:
            raise BadRequest(f"dimensions must be an integer from 1 to {hi}, got {dims!r}"[:200])
    for name in ("model", "user"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise BadRequest(f"{name} must be a string")
    return EmbeddingRequest(inputs, doc.get("model"), fmt == "base64", dims)


def response(vectors: np.ndarray, model: str, prompt_tokens: int, as_base64: bool) -> bytes:
    """OpenAI's list of embeddings, one per input in order."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    data = []
    for i, row in enumerate(vectors):
        embedding: Any = base64.b64encode(row.tobytes()).decode() if as_base64 else row
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
