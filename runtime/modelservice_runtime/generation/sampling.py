"""Per-row token selection: greedy, temperature, top-k, top-p, a per-request seed with its
own numpy Generator (so seeded rows share the batch), and the log-probability of the chosen
token on request.

A step's logits come as one [rows, vocab] array. Each row goes through its
`LogitsProcessor`s (none by default; logit_bias, penalties or a constrained-decoding token
mask are processors), then is sampled. Rows that are greedy with no processors and want no
log-probabilities are chosen together with one argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How one generation picks tokens; temperature 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or less): no top-k bound
    seed: int | None = None
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # and this many most likely tokens with theirs (0..20)
    ignore_eos: bool = False  # an end-of-sequence token does not end the generation

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class LogitsProcessor(Protocol):
    """Changes one row's logits before sampling (in place or as a new array).
    `generated` is the row's tokens so far (not the prompt)."""

    def __call__(self, generated: Sequence[int], logits: np.ndarray) -> np.ndarray: ...


@dataclass(eq=False)
class RowSampler:
    """The sampling state of one row: its parameters, its random generator, its processors."""

    params: SamplingParams
    processors: list[LogitsProcessor] = field(default_factory=list)
    # The last choice's most likely tokens and their log-probabilities (top_logprobs).
    top: tuple[np.ndarray, np.ndarray] | None = None
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    @property
    def rng(self) -> np.random.Generator:
        # Made on first use: a greedy row never needs one, and making one costs ~20 us.
        if self._rng is None:
            self._rng = np.random.default_rng(self.params.seed)
        return self._rng

    @property
    def plain_greedy(self) -> bool:
        return self._plain

    def __post_init__(self) -> None:
        # Asked for every row at every step: computed once (processors are fixed at start).
        self._plain = self.params.greedy and not self.processors and not self.params.logprobs

    def choose(self, logits: np.ndarray, generated: Sequence[int]) -> tuple[int, float]:
        """(token, its log-probability under the processed logits, or NaN if not asked)."""
        for process in self.processors:
            logits = process(generated, logits)
        p = self.params
        if p.greedy:
            token = int(np.argmax(logits))
        else:
            token = _sample(logits, p.temperature, p.top_k, p.top_p, self.rng)
        if not p.logprobs:
            return token, float("nan")
        logprobs = _log_softmax(logits)
        if p.top_logprobs:
            k = min(p.top_logprobs, logprobs.size)
            best = np.argpartition(logprobs, -k)[-k:]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            self.top = (best.astype(np.int32), logprobs[best].astype(np.float32))
        return token, float(logprobs[token])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _sample(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> int:
    x = logits.astype(np.float64) / temperature
    keep = np.argpartition(x, -top_k)[-top_k:] if 0 < top_k < x.size else np.arange(x.size)
    x = x[keep]
    order = np.argsort(-x, kind="stable")
    keep, x = keep[order], x[order]
    probs = np.exp(x - x[0])
    probs /= probs.sum()
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(probs), top_p)) + 1  # the smallest set reaching p
        keep, probs = keep[:cut], probs[:cut] / probs[:cut].sum()
    at = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
    return int(keep[min(at, len(keep) - 1)])


def select(
    samplers: Sequence[RowSampler],
    logits: np.ndarray,
    generated: Sequence[Sequence[int]],
) -> tuple[list[int], list[float]]:
    """The next token of each row of `logits` ([rows, vocab]) and its log-probability."""
    n = len(samplers)
    logprobs = [float("nan")] * n
    plain = [i for i, s in enumerate(samplers) if s.plain_greedy]
    if len(plain) == n:  # the common case: every row greedy, one argmax
        return np.argmax(logits, axis=1).tolist(), logprobs
    tokens: list[int] = [0] * n
    if plain:
        best = np.argmax(logits[plain], axis=1)
        for i, t in zip(plain, best.tolist(), strict=True):
            tokens[i] = t
    if len(plain) < n:
        for i, s in enumerate(samplers):
            if not s.plain_greedy:
                tokens[i], logprobs[i] = s.choose(logits[i], generated[i])
    return tokens, logprobs
