"""Prefix caching over the engine's own KV rows: a prompt that starts like a running
request's prompt, or like what a freed row still holds (an earlier request's prompt and
answer: a system prompt, a chat's history), starts from those tokens' cache instead of
prefilling them again.

There is no separate store: the cache of a freed row stays in its slot until something
writes there. The scheduler keeps here what each free slot still holds, places a request
into the free slot holding the longest start of its prompt, or copies that start from a
running row into the slot it takes, then prefills only the rest (decoder.prefill_more).
A free slot that rides along in a decode run gets position 0 written, so it is forgotten
then; a slot taken by a new request is forgotten at once.
"""

from __future__ import annotations

import numpy as np

# Shorter shared starts are not worth a search and a copy (a prompt's first tokens are
# often a chat template's few fixed tokens).
MIN_PREFIX = 32


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class PrefixIndex:
    """The tokens each free slot's KV cache still holds, at positions 0..len-1."""

    def __init__(self, slots: int, min_prefix: int = MIN_PREFIX) -> None:
        self.min_prefix = min_prefix
        self.free: list[np.ndarray | None] = [None] * slots

    def keep(self, slot: int, tokens: np.ndarray) -> None:
        self.free[slot] = tokens if len(tokens) >= self.min_prefix else None

    def drop(self, slot: int) -> None:
        self.free[slot] = None

    def best(self, prompt: np.ndarray, running: dict[int, np.ndarray]) -> tuple[int, int]:
        """(slot, n): the slot whose cache holds the longest start of `prompt`, among the
        free slots and the `running` rows (slot -> the tokens of its prompt in its cache),
        and how many tokens of it to reuse: at most len(prompt) - 1, since the prompt's
        last token must run for its logits. (-1, 0) when none reaches min_prefix."""
        best_slot, best = -1, 0
        candidates = [(s, t) for s, t in enumerate(self.free) if t is not None]
        for slot, tokens in [*candidates, *running.items()]:
            n = min(common_prefix(prompt, tokens), len(prompt) - 1)
            if n > best:
                best_slot, best = slot, n
        return (best_slot, best) if best >= self.min_prefix else (-1, 0)
