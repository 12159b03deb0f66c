"""Logits processors a request asks for: `logit_bias`, `presence_penalty`,
`frequency_penalty` (OpenAI's) and `repetition_penalty` (transformers' and vLLM's). They
travel to the engine process as a small JSON document beside the ADD message (ipc.py) and
become the row's `LogitsProcessor`s (sampling.py), applied to its logits before sampling,
greedy rows included.

- logit_bias: {token id: bias} added to those tokens' logits (-100 bans, +100 forces);
- presence_penalty p: minus p for every token already generated (once per token);
- frequency_penalty f: minus f times the number of times a token was generated;
- repetition_penalty r: every token of the prompt or generated so far has its logit divided
  by r when positive and multiplied by r when negative (transformers'
  RepetitionPenaltyLogitsProcessor);
- grammar: constrained decoding (`response_format`): an llguidance grammar (from a JSON
  schema); each step the row's matcher takes the tokens generated since the last step and
  every token it does not allow gets -inf, so the text always parses; once the grammar is
  complete only the end-of-sequence token is left.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelservice_runtime.generation.sampling import LogitsProcessor


def encode(spec: dict[str, Any]) -> bytes:
    """The document for the wire (empty: no processors)."""
    spec = {k: v for k, v in spec.items() if v}
    return json.dumps(spec).encode() if spec else b""


def build(raw: bytes, prompt: np.ndarray) -> list[LogitsProcessor]:
    """The processors of a document from `encode`, for a row with this `prompt`."""
    if not raw:
        return []
    spec = json.loads(raw)
    out: list[LogitsProcessor] = []
    if spec.get("repetition_penalty"):
        out.append(RepetitionPenalty(float(spec["repetition_penalty"]), prompt))
    if spec.get("presence_penalty") or spec.get("frequency_penalty"):
        out.append(
            OccurrencePenalty(
                float(spec.get("presence_penalty") or 0), float(spec.get("frequency_penalty") or 0)
            )
        )
    if spec.get("logit_bias"):
        out.append(LogitBias({int(k): float(v) for k, v in spec["logit_bias"].items()}))
    if spec.get("grammar"):  # last: nothing after it may re-allow a masked token
        out.append(GrammarMask(spec["grammar"]))
    return out


_TOKENIZER: dict[str, Any] = {}  # the folder's llguidance tokenizer, made once


def use_tokenizer(tokenizer_json: str) -> None:
    """The engine process names its model's tokenizer.json (the grammar works on its tokens)."""
    _TOKENIZER["path"] = tokenizer_json


def grammar_tokenizer(path: str | None = None) -> Any:
    """llguidance's tokenizer of `path` (default: the one named by use_tokenizer)."""
    import llguidance

    path = path or _TOKENIZER["path"]
    cached = _TOKENIZER.get(("tok", path))
    if cached is None:
        with open(path) as f:
            cached = _TOKENIZER[("tok", path)] = llguidance.LLTokenizer(f.read())
    return cached


class GrammarMask:
    def __init__(self, grammar: str) -> None:
        import llguidance
        import llguidance.numpy

        self._lnp = llguidance.numpy
        self.tokenizer = grammar_tokenizer()
        self.matcher = llguidance.LLMatcher(self.tokenizer, grammar)
        self.mask = llguidance.numpy.allocate_token_bitmask(1, self.tokenizer.vocab_size)
        self.consumed = 0

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        for token in generated[self.consumed :]:
            self.matcher.consume_token(int(token))
        self.consumed = len(generated)
        out = logits.astype(np.float32, copy=True)
        n = self.tokenizer.vocab_size
        out[n:] = -np.inf  # rows of the model's vocabulary the tokenizer has no token for
        if self.matcher.is_stopped() or self.matcher.is_error():
            eos = self.tokenizer.eos_token
            keep = out[eos]
            out[:] = -np.inf
            out[eos] = keep if np.isfinite(keep) else 0.0
            return out
        self._lnp.fill_next_token_bitmask(self.matcher, self.mask, 0)
        view = out[None, :n]
        self._lnp.apply_token_bitmask_inplace(view, self.mask)
        return out


class LogitBias:
    def __init__(self, bias: dict[int, float]) -> None:
        self.ids = np.array(list(bias), dtype=np.int64)
        self.values = np.array(list(bias.values()), dtype=np.float32)

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        out = logits.astype(np.float32, copy=True)
        out[self.ids] += self.values
        return out


class OccurrencePenalty:
    def __init__(self, presence: float, frequency: float) -> None:
        self.presence = presence
        self.frequency = frequency

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        if not generated:
            return logits
        counts = Counter(generated)
        ids = np.fromiter(counts.keys(), np.int64, len(counts))
        n = np.fromiter(counts.values(), np.float32, len(counts))
        out = logits.astype(np.float32, copy=True)
        out[ids] -= self.presence + self.frequency * n
        return out


class RepetitionPenalty:
    def __init__(self, penalty: float, prompt: np.ndarray) -> None:
        self.penalty = penalty
        self.prompt = {int(t) for t in prompt}

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> np.ndarray:
        ids = np.fromiter(self.prompt.union(generated), np.int64)
        out = logits.astype(np.float32, copy=True)
        seen = out[ids]
        out[ids] = np.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return out
