"""Continuous batching: requests join and leave the running batch between steps.

Each `step()` (`admit()` then `decode()`):
1. admits waiting requests into free slots (the lowest free slot first), each with a
   prefill run of its own prompt (batch 1), which gives its first token; while other rows
   decode, up to PREFILL_BUDGET prompt tokens a step (at least one prompt);
2. runs one decode step for every running row (rows 0..k-1, k = the highest slot in use
   + 1; a free slot below k rides along unused), which gives each row its next token;
3. ends rows that produced an end-of-sequence token, reached their max_tokens or the slot's
   length; their slots take the next waiting requests at the next step.

A cancelled request leaves at once (its slot is free for the next step). The scheduler knows
nothing of processes or HTTP: engine_process.py drives it and ships its `StepResult`s.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from modelservice_runtime.generation.sampling import LogitsProcessor, RowSampler, SamplingParams
from modelservice_runtime.generation.sampling import select as select_tokens

log = logging.getLogger("modelservice.generation")

PREFILL_BUDGET = 1024  # prompt tokens prefilled per step while other rows decode

# Why a generation ended (the codes travel in ipc.py's step messages).
STOP, LENGTH, CANCELLED, ERROR = 0, 1, 2, 3
REASONS = ("stop", "length", "cancelled", "error")


class DecoderLike(Protocol):
    slots: int
    max_length: int

    def prefill(self, first: int, prompts: list[np.ndarray]) -> np.ndarray:
        """Prompts into the slots first, first+1, ... in one run: [len(prompts), vocab]."""
        ...

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


@dataclass(eq=False)
class Row:
    rid: int
    prompt: np.ndarray  # int64 ids
    sampler: RowSampler
    slot: int = -1
    length: int = 0  # tokens in the slot's cache
    last: int = 0  # the newest token, not yet in the cache
    generated: list[int] = field(default_factory=list)


@dataclass
class StepResult:
    """What one step produced: tokens (rid, token, log-probability) in order, finished rows
    (rid, reason code), error messages by rid, and the rows running and waiting after it."""

    tokens: list[tuple[int, int, float]] = field(default_factory=list)
    finished: list[tuple[int, int]] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    running: int = 0
    queued: int = 0
    rows_in_step: int = 0  # generations in the decode run (0 if none ran)
    # (rid, token ids, log-probabilities): the most likely tokens, for rows that asked
    tops: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tokens or self.finished)


class Scheduler:
    def __init__(self, decoder: DecoderLike, eos_token_ids: Iterable[int]) -> None:
        self.decoder = decoder
        self.eos = frozenset(eos_token_ids)
        self.slots: list[Row | None] = [None] * decoder.slots
        self.waiting: deque[Row] = deque()
        self.by_rid: dict[int, Row] = {}
        self._pending = StepResult()  # what happened between steps (cancels)

    @property
    def running(self) -> int:
        return sum(r is not None for r in self.slots)

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    @property
    def has_news(self) -> bool:
        """Something to report before the next step (a cancel, a refused request)."""
        return bool(self._pending)

    def add(
        self,
        rid: int,
        prompt: np.ndarray,
        params: SamplingParams,
        processors: list[LogitsProcessor] | None = None,
    ) -> None:
        row = Row(rid, prompt.astype(np.int64, copy=False), RowSampler(params, processors or []))
        if len(prompt) + params.max_tokens > self.decoder.max_length + 1 or not len(prompt):
            self._pending.finished.append((rid, ERROR))
            self._pending.errors[rid] = (
                f"prompt of {len(prompt)} tokens with max_tokens {params.max_tokens} does not "
                f"fit the engine's {self.decoder.max_length} positions"
            )
            return
        self.by_rid[rid] = row
        self.waiting.append(row)

    def refuse(self, rid: int, message: str) -> None:
        """End `rid`, never admitted, as failed with `message` (reported at the next step)."""
        self._pending.finished.append((rid, ERROR))
        self._pending.errors[rid] = message

    def cancel(self, rid: int) -> None:
        """End `rid` now (a no-op for one already ended)."""
        row = self.by_rid.pop(rid, None)
        if row is None:
            return
        if row.slot >= 0:
            self.slots[row.slot] = None
        else:
            self.waiting.remove(row)
        self._pending.finished.append((rid, CANCELLED))

    def step(self) -> StepResult:
        """Admit, then decode: one result for both."""
        out = self.admit()
        return self.decode(out)

    def admit(self) -> StepResult:
        """The first half of a step: waiting requests into free slots, their prompts
        prefilled; their first tokens are in the result, which engine_process.py sends
        before the decode run (a new request's first token does not wait for it)."""
        out, self._pending = self._pending, StepResult()
        self._admit(out)
        return self._counted(out)

    def decode(self, out: StepResult | None = None) -> StepResult:
        """The second half: one decode run of every running row (added to `out`)."""
        out = out if out is not None else StepResult()
        self._decode(out)
        return self._counted(out)

    def _counted(self, out: StepResult) -> StepResult:
        out.running = self.running
        out.queued = len(self.waiting)
        return out

    # --- the parts of a step -----------------------------------------------------------------

    def _admit(self, out: StepResult) -> None:
        # While rows are decoding, a step prefills at most PREFILL_BUDGET prompt tokens
        # (always one prompt), so a burst of arrivals does not stall the running rows.
        budget = PREFILL_BUDGET if any(r is not None for r in self.slots) else None
        admitted: list[Row] = []
        for slot, held in enumerate(self.slots):
            if not self.waiting:
                break
            if held is not None:
                continue
            if budget is not None and admitted and len(self.waiting[0].prompt) > budget:
                break
            if budget is not None:
                budget -= len(self.waiting[0].prompt)
            row = self.waiting.popleft()
            row.slot = slot
            self.slots[slot] = row
            admitted.append(row)
        # Rows in neighbouring slots are prefilled together, in one model run.
        for run in _contiguous(admitted):
            try:
                logits = self.decoder.prefill(run[0].slot, [r.prompt for r in run])
            except Exception as e:
                if len(run) > 1:  # one prompt the model refuses must fail alone
                    log.warning("a batched prefill failed (%s): one prompt at a time", e)
                    for row in run:
                        self._prefill_alone(row, out)
                    continue
                log.exception("prefill failed", exc_info=e)
                self._end(run[0], ERROR, out, f"generation failed: {e}")
                continue
            self._first_tokens(run, logits, out)

    def _prefill_alone(self, row: Row, out: StepResult) -> None:
        try:
            logits = self.decoder.prefill(row.slot, [row.prompt])
        except Exception as e:
            log.exception("prefill failed", exc_info=e)
            self._end(row, ERROR, out, f"generation failed: {e}")
            return
        self._first_tokens([row], logits, out)

    def _first_tokens(self, run: list[Row], logits: np.ndarray, out: StepResult) -> None:
        for row in run:
            row.length = len(row.prompt)
        tokens, logprobs = select_tokens(
            [r.sampler for r in run], logits, [r.generated for r in run]
        )
        for row, token, lp in zip(run, tokens, logprobs, strict=True):
            self._emit(row, token, lp, out)

    def _decode(self, out: StepResult) -> None:
        live = [i for i, r in enumerate(self.slots) if r is not None]
        if not live:
            return
        k = live[-1] + 1
        rows = self.slots[:k]
        tokens = np.array([r.last if r is not None else 0 for r in rows], np.int64)
        lengths = np.array([r.length if r is not None else 0 for r in rows], np.int64)
        try:
            logits = self.decoder.decode(tokens, lengths)
        except Exception as e:  # the whole step failed: so do its rows
            log.exception("a decode step failed", exc_info=e)
            for r in rows:
                if r is not None:
                    self._end(r, ERROR, out, f"generation failed: {e}")
            return
        out.rows_in_step = len(live)
        samplers = [rows[i].sampler for i in live]  # type: ignore[union-attr]
        chosen, logprobs = select_tokens(
            samplers,
            logits[live] if len(live) < k else logits,
            [rows[i].generated for i in live],  # type: ignore[union-attr]
        )
        for i, token, lp in zip(live, chosen, logprobs, strict=True):
            row = rows[i]
            assert row is not None
            row.length += 1
            self._emit(row, token, lp, out)

    def _emit(self, row: Row, token: int, logprob: float, out: StepResult) -> None:
        if row.sampler.top is not None:
            out.tops.append((row.rid, *row.sampler.top))
            row.sampler.top = None
        row.generated.append(token)
        row.last = token
        out.tokens.append((row.rid, token, logprob))
        if token in self.eos and not row.sampler.params.ignore_eos:
            self._end(row, STOP, out)
        else:
            full = row.length + 1 > self.decoder.max_length  # no room for one more in the slot
            if full or len(row.generated) >= row.sampler.params.max_tokens:
                self._end(row, LENGTH, out)

    def _end(self, row: Row, reason: int, out: StepResult, error: str | None = None) -> None:
        if row.slot >= 0 and self.slots[row.slot] is row:
            self.slots[row.slot] = None
        self.by_rid.pop(row.rid, None)
        out.finished.append((row.rid, reason))
        if error is not None:
            out.errors[row.rid] = error


def _contiguous(rows: list[Row]) -> list[list[Row]]:
    """`rows` (in slot order) split into runs of neighbouring slots."""
    runs: list[list[Row]] = []
    for row in rows:
        if runs and runs[-1][-1].slot + 1 == row.slot:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs
