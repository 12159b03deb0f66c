"""Text embeddings from an ONNX encoder (a sentence-transformers model exported to ONNX):
the folder, its tokenizer, its pooling and normalisation. Knows nothing of HTTP (the OpenAI
module, embeddings_endpoints.py, parses and answers).

The encoder itself is an ordinary `OnnxModel` served through the data plane, so its runs go
through the dynamic batcher (batching.py) like any model's, and its V2 metadata, readiness
and metrics are every model's. What this module adds: text -> token ids (the `tokenizers`
library and the folder's tokenizer.json), the ids padded to a length bucket (so requests of
similar length batch together: the batcher groups by trailing shape), and the encoder's
token vectors -> one vector per input (pooling over the attention mask, then an optional
L2 normalisation).

The folder, as sentence-transformers saves it and as `optimum-cli export onnx` leaves it:
`model.onnx` (or the only .onnx file, or `onnx/model.onnx`), `tokenizer.json`, and
`1_Pooling/config.json` (pooling_mode_mean_tokens / _cls_token / _lasttoken / _max_tokens)
with `modules.json` listing a `Normalize` module when the vectors are unit length.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.embedding")

POOLING_CONFIG = "1_Pooling/config.json"
MODULES = "modules.json"
TOKENIZER = "tokenizer.json"
POOLINGS = ("mean", "cls", "last", "max")
# sentence-transformers' pooling flags -> our names, in the order they win
_ST_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
}
MIN_BUCKET = 8  # token lengths are padded up to a power of two from here
DEFAULT_MAX_LENGTH = 512
# Outputs that hold one vector per token, by the names exporters give them.
_TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")


def is_embedding_folder(path: Path) -> bool:
    """An encoder folder: tokenizer.json, sentence-transformers' pooling config, and no
    onnxruntime-genai config (a language model has a tokenizer too)."""
    return (
        path.is_dir()
        and (path / TOKENIZER).is_file()
        and (path / POOLING_CONFIG).is_file()
        and not (path / "genai_config.json").exists()
    )


def wants_embedding(settings: Settings) -> bool:
    """--format embedding, or auto and the model is an encoder folder."""
    fmt = settings.format
    return fmt == "embedding" or (fmt == "auto" and is_embedding_folder(Path(settings.model_path)))


def folder_pooling(folder: Path) -> tuple[str | None, bool | None]:
    """(pooling, normalize) as the folder says them; None where it says nothing."""
    pooling = None
    config = folder / POOLING_CONFIG
    if config.is_file():
        doc = json.loads(config.read_text())
        pooling = next((ours for key, ours in _ST_POOLING.items() if doc.get(key)), None)
    normalize = None
    modules = folder / MODULES
    if modules.is_file():
        kinds = [str(m.get("type", "")) for m in json.loads(modules.read_text())]
        normalize = any(k.endswith("Normalize") for k in kinds)
    return pooling, normalize


def pool(tokens: np.ndarray, mask: np.ndarray, how: str, normalize: bool) -> np.ndarray:
    """One vector per row of `tokens` [rows, length, dim] over its `mask` [rows, length]
    (1 for a real token, 0 for padding; right-padded), in float32."""
    tokens = tokens.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[:, :, None]
    if how == "mean":
        out = (tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    elif how == "cls":
        out = tokens[:, 0]
    elif how == "last":
        last = np.maximum(mask.sum(axis=1).astype(np.int64) - 1, 0)
        out = tokens[np.arange(tokens.shape[0]), last]
    elif how == "max":
        out = np.where(m > 0, tokens, -np.inf).max(axis=1)
    else:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
    return l2_normalize(out) if normalize else out.astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def bucket(length: int, cap: int) -> int:
    """The padded length for `length` tokens: a power of two from MIN_BUCKET, at most cap."""
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return min(size, max(cap, length))


@dataclass
class Encoded:
    """A request's inputs, tokenized and padded: the feeds for the encoder."""

    feeds: dict[str, np.ndarray]
    mask: np.ndarray
    tokens: int  # real tokens, all inputs together (usage.prompt_tokens)


class EmbeddingModel:
    """An encoder folder: the ONNX encoder (an OnnxModel the data plane serves and batches),
    its tokenizer, pooling, normalisation and limits."""

    def __init__(self, settings: Settings) -> None:
        from modelservice_runtime.serving.model import ModelLoadError, OnnxModel
        from tokenizers import Tokenizer

        folder = Path(settings.model_path)
        if not (folder.is_dir() and (folder / TOKENIZER).is_file()):
            raise ModelLoadError(
                f"{folder} is not an embedding model folder: expected {TOKENIZER} and an ONNX "
                f"encoder in it (and {POOLING_CONFIG}, or --pooling)"
            )
        pooling, normalize = folder_pooling(folder)
        if settings.pooling != "auto":
            pooling = settings.pooling
        if settings.embedding_normalize != "auto":
            normalize = settings.embedding_normalize == "on"
        if pooling is None:
            raise ModelLoadError(
                f"{folder}: no pooling: {POOLING_CONFIG} is missing or names none; pass "
                f"--pooling ({'|'.join(POOLINGS)})"
            )
        self.pooling: str = pooling
        self.normalize: bool = bool(normalize)
        onnx = folder / "onnx" / "model.onnx"
        self.onnx = OnnxModel(
            settings.model_copy(update={"model_path": onnx}) if onnx.is_file() else settings
        )
        names = set(self.onnx.input_names)
        if not {"input_ids", "attention_mask"} <= names:
            raise ModelLoadError(
                f"the encoder takes inputs {self.onnx.input_names}; an embedding model needs "
                "input_ids and attention_mask (token_type_ids optional)"
            )
        out = next((o for o in self.onnx.outputs if o.name in _TOKEN_OUTPUTS), None)
        out = out or next((o for o in self.onnx.outputs if len(o.shape) == 3), None)
        if out is None:
            raise ModelLoadError(
                f"the encoder has no output of token vectors [batch, tokens, dim] (outputs: "
                f"{self.onnx.output_names})"
            )
        self.output = out.name
        self.dimensions = out.shape[2] if out.shape[2] > 0 else None
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = _max_length(folder)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.pad_id = _pad_id(self.tokenizer)
        self.created = int(time.time())
        log.info(
            "embedding model %s: pooling=%s normalize=%s max_length=%d output=%s",
            folder, self.pooling, self.normalize, self.max_length, self.output,
        )  # fmt: skip

    def warmup(self, max_batch_size: int) -> None:
        from modelservice_runtime.serving.model import ModelLoadError

        try:
            encoded = self.encode(["warm up"] * max(1, min(max_batch_size, 8)))
            self.embed(self.onnx.run(encoded.feeds), encoded.mask)
        except Exception as e:
            raise ModelLoadError(f"warm-up of the embedding model failed: {e}") from e

    def encode(self, inputs: list[str] | list[list[int]]) -> Encoded:
        """Token ids for each input (strings through the tokenizer, with its special
        tokens; id lists as given), right-padded to one bucket length. BadRequest naming
        `input` for an input over the model's length or an id outside the vocabulary."""
        if inputs and isinstance(inputs[0], str):
            ids = [e.ids for e in self.tokenizer.encode_batch(list(inputs))]  # type: ignore[arg-type]
        else:
            ids = inputs  # type: ignore[assignment]
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                raise BadRequest(
                    f"input[{i}] is {len(row)} tokens; this model takes at most "
                    f"{self.max_length} tokens per input"
                )
            if not row:
                raise BadRequest(f"input[{i}] has no tokens")
            bad = next((t for t in row if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise BadRequest(
                    f"input[{i}]: token id {bad} is outside the vocabulary 0..{self.vocab_size - 1}"
                )
        length = bucket(max(len(r) for r in ids), self.max_length)
        input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.onnx.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return Encoded(feeds, mask, sum(len(r) for r in ids))

    def embed(self, outputs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        """The encoder's outputs for some rows -> their vectors, pooled and normalised."""
        return pool(outputs[self.output], mask, self.pooling, self.normalize)


def truncate(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """The first `dimensions` components (Matryoshka-style shortening, as OpenAI's
    `dimensions`), renormalised to unit length when the model's vectors are."""
    out = vectors[:, :dimensions]
    return l2_normalize(out) if normalize else np.ascontiguousarray(out)


def _max_length(folder: Path) -> int:
    """The longest input: sentence-transformers' max_seq_length, else tokenizer_config's
    model_max_length, else config.json's max_position_embeddings, else 512."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
        ("config.json", "max_position_embeddings"),
    ):
        path = folder / name
        if path.is_file():
            value: Any = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:
                return value
    return DEFAULT_MAX_LENGTH


def _pad_id(tokenizer: Any) -> int:
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0
