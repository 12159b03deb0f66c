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
  RepetitionPenaltyLogitsProcessor).
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
