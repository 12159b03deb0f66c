"""Continuous batching: requests join and leave the running batch between steps.

Each `step()` (`admit()` then `decode()`):
1. prefills prompts: first the next part of prompts already part-way in (oldest first),
   then waiting requests into free slots (the lowest free slot first; neighbouring slots
   in one run). While other rows decode, a step prefills at most PREFILL_BUDGET prompt
   tokens, a longer prompt a part a step (chunked prefill), so the running rows are never
   held for a whole long prompt; with nothing decoding, whole prompts at once. The last
   part of a prompt gives its first token;
2. runs one decode step for every decoding row (rows 0..k-1, k = the highest slot
   decoding + 1; a free slot or a prompt part-way in below k rides along unused), which
   gives each row its next token (a run interrupted part-way, decoder.Interrupted, gives
   none and changes nothing: the rows decode at the next step);
3. ends rows that produced an end-of-sequence token, reached their max_tokens or the slot's
   length; their slots take the next waiting requests at the next step.

A cancelled request leaves at once (its slot is free for the next step). The scheduler knows
nothing of processes or HTTP: engine_process.py drives it and ships its `StepResult`s.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from modelservice_cli.serve_flags import BY_FIELD

from modelservice_runtime.generation.decoder import Interrupted
from modelservice_runtime.generation.prefixes import MIN_PREFIX, PrefixIndex
from modelservice_runtime.generation.sampling import LogitsProcessor, RowSampler, SamplingParams
from modelservice_runtime.generation.sampling import select as select_tokens

log = logging.getLogger("modelservice.generation")

# Prompt tokens prefilled per step while other rows decode (--prefill-budget): each step
# the running rows wait for at most about a prompt of this many tokens (vLLM's chunked
# prefill defaults to 512 or more a step on GPUs). Deeper into a long prompt a part is
# smaller (part_size).
PREFILL_BUDGET: int = BY_FIELD["prefill_budget"].default


def part_size(held: int, budget: int) -> int:
    """The most tokens of a prompt to prefill after `held` of it within `budget`: m with
    m x (held + m) <= budget^2. A part attends over everything before it, and on the CPU
    that dominates a long prompt (llama25m, 2,000 tokens whole: 3.0 s; in parts of 512,
    the last part alone took 1.4 s, 46% of the attention work), so a part costs about
    what a prompt of `budget` tokens costs however deep it is."""
    m = int((-held + math.sqrt(held * held + 4 * budget * budget)) / 2)
    return max(1, min(budget, m))


# Why a generation ended (the codes travel in ipc.py's step messages).
STOP, LENGTH, CANCELLED, ERROR = 0, 1, 2, 3
REASONS = ("stop", "length", "cancelled", "error")


class DecoderLike(Protocol):
    slots: int
    max_length: int

    def prefill(self, first: int, prompts: list[np.ndarray]) -> np.ndarray:
        """Prompts into the slots first, first+1, ... in one run: [len(prompts), vocab]."""
        ...

    def prefill_more(self, slot: int, tokens: np.ndarray, held: int) -> np.ndarray:
        """A prompt's next part into a slot holding `held` of it: [vocab]."""
        ...

    def copy_prefix(self, source: int, target: int, n: int) -> bool:
        """The first n positions of one slot's cache into another's (False: cannot)."""
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

    @property
    def in_prefill(self) -> bool:
        """In a slot with part of its prompt still to prefill (it does not decode yet)."""
        return self.length < len(self.prompt)

    def cached_tokens(self) -> np.ndarray:
        """The tokens in its slot's cache, positions 0..length-1: its prompt, then its
        generated tokens but the newest."""
        if self.length <= len(self.prompt):
            return self.prompt[: self.length]
        answer = np.asarray(self.generated[: self.length - len(self.prompt)], np.int64)
        return np.concatenate([self.prompt, answer])


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
    interrupted: bool = False  # the decode run was stopped part-way (Decoder.interrupt)
    cached_tokens: int = 0  # prompt tokens taken from a cache instead of prefilled
    # (rid, token ids, log-probabilities): the most likely tokens, for rows that asked
    tops: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tokens or self.finished)


class Scheduler:
    def __init__(
        self,
        decoder: DecoderLike,
        eos_token_ids: Iterable[int],
        prefill_budget: int = PREFILL_BUDGET,
        min_prefix: int | None = MIN_PREFIX,
    ) -> None:
        """`min_prefix`: the shortest shared start reused from another row's cache
        (prefixes.py); None turns prefix caching off."""
        self.decoder = decoder
        self.prefill_budget = prefill_budget
        self.prefixes = PrefixIndex(decoder.slots, min_prefix) if min_prefix else None
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
    def can_start_another(self) -> bool:
        """A request arriving now would start at the next step: a slot is free, none waits."""
        return not self.waiting and any(r is None for r in self.slots)

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
            self._free(row, keep_cache=True)
        else:
            self.waiting.remove(row)
        self._pending.finished.append((rid, CANCELLED))

    def _free(self, row: Row, keep_cache: bool) -> None:
        """The row's slot free for the next request; what its cache holds stays known."""
        self.slots[row.slot] = None
        if self.prefixes is not None and keep_cache:
            self.prefixes.keep(row.slot, row.cached_tokens())

    def step(self) -> StepResult:
        """Admit, then decode: one result for both."""
        out = self.admit()
        return self.decode(out)

    def admit(self) -> StepResult:
        """The first half of a step: prompts prefilled (the next parts of those part-way
        in, then waiting requests into free slots); the first tokens of those whose last
        part ran are in the result, which engine_process.py sends before the decode run
        (a new request's first token does not wait for it)."""
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
        decoding = any(r is not None and not r.in_prefill for r in self.slots)
        budget = self.prefill_budget if decoding else None  # None: no bound
        for row in sorted(self._in_prefill(), key=lambda r: r.rid):  # the oldest first
            if budget is not None and budget <= 0:
                return
            budget = self._next_part(row, budget, out)
        admitted: list[Row] = []
        while self.waiting and (budget is None or budget > 0):
            free = [i for i, r in enumerate(self.slots) if r is None]
            if not free:
                break
            row = self.waiting.popleft()
            row.slot, row.length = self._place(row.prompt, free)
            self.slots[row.slot] = row
            out.cached_tokens += row.length
            if row.length or (budget is not None and len(row.prompt) > budget):
                # A cached start, or too long for this step whole: in parts, alone.
                budget = self._next_part(row, budget, out)
                continue
            if budget is not None:
                budget -= len(row.prompt)
            admitted.append(row)
        admitted.sort(key=lambda r: r.slot)
        # Whole prompts in neighbouring slots are prefilled together, in one model run.
        for run in _contiguous(admitted):
            try:
                logits = self.decoder.prefill(run[0].slot, [r.prompt for r in run])
            except Exception as e:
                if len(run) > 1:  # one prompt the model refuses must fail alone
                    log.warning("a batched prefill failed (%s): one prompt at a time", e)
                    for row in run:
                        self._prefill_part(row, len(row.prompt), out)
                    continue
                log.exception("prefill failed", exc_info=e)
                self._end(run[0], ERROR, out, f"generation failed: {e}")
                continue
            self._first_tokens(run, logits, out)

    def _place(self, prompt: np.ndarray, free: list[int]) -> tuple[int, int]:
        """(slot, tokens of the prompt already in its cache) for a new request: the free
        slot holding the longest start of its prompt, else the lowest free slot, with the
        start copied from a running row when one has it."""
        if self.prefixes is None:
            return free[0], 0
        running = {r.slot: r.prompt[: r.length] for r in self.slots if r is not None}
        source, n = self.prefixes.best(prompt, running)
        if n and source in free:
            self.prefixes.drop(source)
            return source, n
        self.prefixes.drop(free[0])
        if n and self.decoder.copy_prefix(source, free[0], n):
            return free[0], n
        return free[0], 0

    def _next_part(self, row: Row, budget: int | None, out: StepResult) -> int | None:
        """The row's prompt onwards from what its cache holds, as much as `budget` allows
        (None: all of it); the budget left."""
        n = len(row.prompt) - row.length
        if budget is not None:
            n = min(n, part_size(row.length, budget))
            budget -= n
        self._prefill_part(row, n, out)
        return budget

    def _in_prefill(self) -> list[Row]:
        return [r for r in self.slots if r is not None and r.in_prefill]

    def _prefill_part(self, row: Row, n: int, out: StepResult) -> None:
        """The next `n` tokens of the row's prompt; the last part gives its first token."""
        part = row.prompt[row.length : row.length + n]
        try:
            if row.length:
                logits = self.decoder.prefill_more(row.slot, part, row.length)[None]
            else:
                logits = self.decoder.prefill(row.slot, [part])
        except Exception as e:
            log.exception("prefill failed", exc_info=e)
            self._end(row, ERROR, out, f"generation failed: {e}")
            return
        row.length += n
        if not row.in_prefill:
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
        live = [i for i, r in enumerate(self.slots) if r is not None and not r.in_prefill]
        if not live:
            return
        k = live[-1] + 1
        rows = self.slots[:k]
        if self.prefixes is not None:
            for i, r in enumerate(rows):
                if r is None:  # rides along and writes its position 0
                    self.prefixes.drop(i)
        tokens = np.array([r.last if r is not None else 0 for r in rows], np.int64)
        # A row part-way through its prompt rides along at its own length: what the step
        # writes there, its next part overwrites.
        lengths = np.array([r.length if r is not None else 0 for r in rows], np.int64)
        try:
            logits = self.decoder.decode(tokens, lengths)
        except Interrupted:  # nothing changed: the rows decode at the next step
            out.interrupted = True
            return
        except Exception as e:  # the whole step failed: so do its rows
            log.exception("a decode step failed", exc_info=e)
            for i in live:
                self._end(rows[i], ERROR, out, f"generation failed: {e}")  # type: ignore[arg-type]
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
            self._free(row, keep_cache=reason != ERROR)
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
