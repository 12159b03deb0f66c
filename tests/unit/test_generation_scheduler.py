"""The scheduler over a decoder whose logits are a function of what it was given: joins and
leaves between steps, slot reuse, cancels, end of sequence, max_tokens, the slot's length,
failures; and the packed step messages of ipc.py."""

from __future__ import annotations

import numpy as np
import pytest
from modelservice_runtime.generation import ipc
from modelservice_runtime.generation.decoder import Interrupted
from modelservice_runtime.generation.sampling import RowSampler, SamplingParams, select
from modelservice_runtime.generation.scheduler import CANCELLED, ERROR, LENGTH, STOP, Scheduler

VOCAB = 50
EOS = 49


class Decoder:
    """Greedy next token = (last token + 1) % 48, or EOS after a token `eos_after`; records
    what each run got, like a model's cache: a row's length must be what it holds."""

    def __init__(self, slots: int = 8, max_length: int = 64, eos_after: int = -1) -> None:
        self.slots, self.max_length, self.eos_after = slots, max_length, eos_after
        self.held = [0] * slots  # tokens in each slot's cache
        self.content: list[list[int]] = [[] for _ in range(slots)]  # what each cache holds
        self.copies: list[tuple[int, int, int]] = []  # (source, target, n)
        self.runs: list[tuple[str, int]] = []  # ("prefill", slot) or ("decode", rows)
        self.fail_decode = False
        self.interrupt_decodes = 0  # the next this many decode runs are interrupted
        self.fail_prompt: int | None = None  # a prompt starting with this token is refused
        self.prefill_runs: list[int] = []  # prompts per prefill run
        self.prompt_tokens: list[int] = []  # prompt tokens per run (whole prompts and parts)

    def _logits(self, last: int) -> np.ndarray:
        out = np.zeros(VOCAB, np.float32)
        out[EOS if last == self.eos_after else (last + 1) % 48] = 1.0
        return out

    def prefill(self, first: int, prompts: list[np.ndarray]) -> np.ndarray:
        self.prefill_runs.append(len(prompts))
        out = []
        for slot, prompt in enumerate(prompts, start=first):
            if int(prompt[0]) == self.fail_prompt:
                raise RuntimeError("a prompt the model refuses")
            self.runs.append(("prefill", slot))
            self.held[slot] = len(prompt)
            self.content[slot] = [int(t) for t in prompt]
            out.append(self._logits(int(prompt[-1])))
        self.prompt_tokens.append(sum(len(p) for p in prompts))
        return np.stack(out)

    def prefill_more(self, slot: int, tokens: np.ndarray, held: int) -> np.ndarray:
        # The slot holds at least `held` (a decode step it rode along in wrote one more
        # position, which this part overwrites).
        assert 0 < held <= self.held[slot], (slot, held, self.held[slot])
        self.runs.append(("prefill_more", slot))
        self.held[slot] = held + len(tokens)
        self.content[slot] = self.content[slot][:held] + [int(t) for t in tokens]
        self.prompt_tokens.append(len(tokens))
        return self._logits(int(tokens[-1]))

    def copy_prefix(self, source: int, target: int, n: int) -> bool:
        assert len(self.content[source]) >= n
        self.copies.append((source, target, n))
        self.content[target] = self.content[source][:n]
        self.held[target] = n
        return True

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.fail_decode:
            raise RuntimeError("boom")
        if self.interrupt_decodes:
            self.interrupt_decodes -= 1
            raise Interrupted
        self.runs.append(("decode", len(tokens)))
        for slot, n in enumerate(lengths.tolist()):
            if n:
                assert self.held[slot] == n, (slot, n, self.held[slot])
                self.held[slot] = n + 1
            # Every row of the run writes its token at its length: a free slot at 0.
            self.content[slot] = [*self.content[slot][:n], int(tokens[slot])]
        return np.stack([self._logits(int(t)) for t in tokens])


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0)


def tokens_of(results: list, rid: int) -> list[int]:
    return [t for r in results for (i, t, _) in r.tokens if i == rid]


def run(s: Scheduler, limit: int = 1000) -> list:
    out = []
    while s.busy or s.has_news:
        out.append(s.step())
        assert len(out) < limit
    return out


def test_rows_join_between_steps_and_each_gets_its_own_tokens() -> None:
    d = Decoder()
    s = Scheduler(d, [EOS])
    s.add(1, np.array([5]), greedy(4))
    first = s.step()
    assert tokens_of([first], 1) == [6, 7]  # the prefill's token, then the step's
    s.add(2, np.array([20, 30]), greedy(3))  # joins the running batch
    rest = run(s)
    assert tokens_of([first, *rest], 1) == [6, 7, 8, 9]
    assert tokens_of(rest, 2) == [31, 32, 33]
    assert ("decode", 2) in d.runs  # both in one model run
    assert [f for r in rest for f in r.finished] == [(1, LENGTH), (2, LENGTH)]


def test_more_rows_than_slots_wait_and_take_freed_slots_at_once() -> None:
    d = Decoder(slots=2)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(2))
    s.add(2, np.array([1]), greedy(10))
    s.add(3, np.array([1]), greedy(2))
    r = s.step()
    assert (r.running, r.queued) == (1, 1)  # 1 ended (2 tokens), 2 runs, 3 waits
    assert (1, LENGTH) in r.finished
    r = s.step()  # 3 takes slot 0 in the very next step
    assert d.runs[-2:] == [("prefill", 0), ("decode", 2)]
    assert tokens_of([r], 3) == [2, 3]
    assert r.running == 1 and r.queued == 0
    run(s)


def test_cancel_frees_the_slot_and_reports_once() -> None:
    d = Decoder(slots=1)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(30))
    s.add(2, np.array([1]), greedy(2))
    s.step()
    s.cancel(1)
    s.cancel(1)  # twice: once reported
    s.cancel(99)  # unknown: ignored
    r = s.step()
    assert r.finished[0] == (1, CANCELLED)
    assert tokens_of([r], 2) == [2, 3]  # the waiting request took the slot in the same step
    s.add(3, np.array([1]), greedy(5))
    s.cancel(3)  # cancelled while waiting
    assert s.step().finished == [(3, CANCELLED)]
    assert not s.busy


def test_end_of_sequence_and_the_slot_length_end_a_row() -> None:
    d = Decoder(eos_after=3, max_length=10)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(8))  # 2, 3, EOS
    s.add(2, np.array([10] * 5), greedy(6))  # fits: 5 + 6 - 1 = 10 positions
    s.add(3, np.array([10] * 5), greedy(7))  # does not
    results = run(s)
    assert tokens_of(results, 1) == [2, 3, EOS]
    assert len(tokens_of(results, 2)) == 6
    finished = dict(f for r in results for f in r.finished)
    assert finished == {1: STOP, 2: LENGTH, 3: ERROR}
    assert "does not fit" in next(r.errors[3] for r in results if 3 in r.errors)


def test_a_failed_decode_fails_its_rows_and_the_scheduler_goes_on() -> None:
    d = Decoder()
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(5))
    s.add(2, np.array([1]), greedy(5))
    d.fail_decode = True
    r = s.step()
    assert sorted(r.finished) == [(1, ERROR), (2, ERROR)] and "boom" in r.errors[1]
    d.fail_decode = False
    s.add(3, np.array([1]), greedy(2))
    assert tokens_of(run(s), 3) == [2, 3]


def test_more_than_four_rows_in_one_step() -> None:
    d = Decoder(slots=16)
    s = Scheduler(d, [EOS])
    for rid in range(1, 13):
        s.add(rid, np.array([rid]), greedy(3))
    r = s.step()
    assert r.rows_in_step == 12 and ("decode", 12) in d.runs


def test_seeded_rows_repeat_and_differ_by_seed() -> None:
    logits = np.random.default_rng(0).normal(size=(1, VOCAB)).astype(np.float32)

    def draw(seed: int) -> list[int]:
        sampler = RowSampler(SamplingParams(max_tokens=9, temperature=1.0, top_k=20, seed=seed))
        return [select([sampler], logits, [[]])[0][0] for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_p_and_top_k_keep_to_their_sets_and_logprobs_are_right() -> None:
    logits = np.array([[0.0, 5.0, 4.9, -3.0, 1.0]], np.float32)
    k2 = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_k=2, seed=1))
    assert {select([k2], logits, [[]])[0][0] for _ in range(200)} == {1, 2}
    p = RowSampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.01, seed=1))
    assert {select([p], logits, [[]])[0][0] for _ in range(50)} == {1}
    lp = RowSampler(SamplingParams(max_tokens=1, temperature=0, logprobs=True))
    tokens, logprobs = select([lp], logits, [[]])
    x = logits[0].astype(np.float64)
    assert tokens == [1]
    assert logprobs[0] == pytest.approx(x[1] - np.log(np.exp(x).sum()))


def test_a_logits_processor_sees_its_row_and_changes_the_choice() -> None:
    seen = []

    def ban_one(generated: list[int], logits: np.ndarray) -> np.ndarray:
        seen.append(list(generated))
        logits = logits.copy()
        logits[1] = -np.inf
        return logits

    row = RowSampler(SamplingParams(max_tokens=1, temperature=0), [ban_one])
    logits = np.array([[0.0, 5.0, 4.9]], np.float32)
    assert select([row], logits, [[7, 8]])[0] == [2]
    assert seen == [[7, 8]]


def test_an_interrupted_decode_run_leaves_every_row_as_it_was() -> None:
    d = Decoder(slots=4)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([5]), greedy(4))
    first = s.step()  # 6 from its prefill, 7 from a decode run
    d.interrupt_decodes = 2
    r = s.step()
    assert r.interrupted and not r.tokens and r.rows_in_step == 0 and not r.finished
    assert ipc.unpack_step(ipc.pack_step(r)).interrupted
    s.add(2, np.array([9]), greedy(2))  # the request it was interrupted for
    r = s.step()  # 2's first token; the decode run interrupted again
    assert r.interrupted and tokens_of([r], 2) == [10] and not tokens_of([r], 1)
    results = [first, r, *run(s)]
    assert tokens_of(results, 1) == [6, 7, 8, 9] and tokens_of(results, 2) == [10, 11]
    assert not any(r.interrupted for r in results[2:])
    assert not ipc.unpack_step(ipc.pack_step(results[-1])).interrupted


def test_a_request_could_start_at_once_only_with_a_free_slot_and_none_waiting() -> None:
    s = Scheduler(Decoder(slots=2), [EOS])
    s.add(1, np.array([5]), greedy(9))
    s.add(2, np.array([5]), greedy(9))
    assert not s.can_start_another  # two wait
    s.step()
    assert not s.can_start_another  # both run: no slot
    s.cancel(2)
    assert s.can_start_another
    s.add(3, np.array([5]), greedy(9))
    assert not s.can_start_another  # one waits for the slot


def test_step_messages_pack_and_unpack() -> None:
    d = Decoder()
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), SamplingParams(max_tokens=1, temperature=0, logprobs=True))
    s.add(7, np.array([1]), greedy(3))
    s.add(9, np.array([1] * 100), greedy(1))  # refused: an error message travels too
    r = s.step()
    step = ipc.unpack_step(ipc.pack_step(r))
    assert list(zip(step.rids, step.tokens, strict=True)) == [(i, t) for i, t, _ in r.tokens]
    assert step.finished == r.finished and step.errors == r.errors
    assert not np.isnan(step.logprobs[0]) and np.isnan(step.logprobs[-1])
    assert (step.running, step.queued, step.rows_in_step) == (r.running, r.queued, 1)
    params = SamplingParams(max_tokens=5, temperature=0.5, top_p=0.9, top_k=3, seed=2**40)
    rid, prompt, back = ipc.unpack_add(ipc.pack_add(4, [3, 2, 1], params))
    assert (rid, prompt.tolist(), back) == (4, [3, 2, 1], params)
    assert ipc.unpack_add(ipc.pack_add(4, [1], greedy(2)))[2].seed is None


def test_prompt_tokens_per_step_stay_within_the_budget_while_rows_decode() -> None:
    from modelservice_runtime.generation.scheduler import PREFILL_BUDGET

    d = Decoder(slots=8, max_length=8 * PREFILL_BUDGET)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(60))
    s.step()
    lengths = [PREFILL_BUDGET // 2 + 1, PREFILL_BUDGET // 2 + 1, 3 * PREFILL_BUDGET + 5, 7]
    for rid, n in enumerate(lengths, start=2):
        s.add(rid, np.full(n, 5 * rid, np.int64), greedy(2))
    results = []
    while any(r is not None and r.rid != 1 for r in s.slots) or s.waiting:
        before = len(d.prompt_tokens)
        results.append(s.step())
        assert sum(d.prompt_tokens[before:]) <= PREFILL_BUDGET
        assert tokens_of(results[-1:], 1), "the decoding row got no token this step"
    for rid in range(2, 6):  # each prompt's first token follows its own last token
        assert tokens_of(results, rid) == [5 * rid + 1, 5 * rid + 2]
    assert any(kind == "prefill_more" for kind, _ in d.runs)  # the long one went in parts


def test_a_long_prompt_is_prefilled_in_parts_and_the_running_rows_keep_decoding() -> None:
    from modelservice_runtime.generation.scheduler import PREFILL_BUDGET

    d = Decoder(slots=4, max_length=8 * PREFILL_BUDGET)
    s = Scheduler(d, [EOS])
    s.add(1, np.array([1]), greedy(40))
    s.step()
    prompt = np.arange(3 * PREFILL_BUDGET + 5, dtype=np.int64) % 40
    s.add(2, prompt, greedy(3))
    start = len(d.prompt_tokens)
    results = run(s)
    parts = d.prompt_tokens[start:]
    assert sum(parts) == len(prompt) and parts[0] == PREFILL_BUDGET
    # Deeper parts are smaller: each attends over what is in before it, and costs about
    # what one prompt of the budget does (m x (held + m) <= budget^2).
    held = 0
    for part in parts:
        assert part * (held + part) <= PREFILL_BUDGET**2
        held += part
    assert parts == sorted(parts, reverse=True) and len(parts) > 4
    kinds = [kind for kind, _ in d.runs if kind.startswith("prefill")]
    assert kinds[-len(parts) :] == ["prefill"] + ["prefill_more"] * (len(parts) - 1)
    first = int(prompt[-1])
    assert tokens_of(results, 2) == [first + 1, first + 2, first + 3]
    # While its prompt went in, the running row got one token every step.
    until = next(i for i, r in enumerate(results) if tokens_of([r], 2))
    assert until >= len(parts) - 1 and all(tokens_of([r], 1) for r in results[:until])


def test_with_nothing_decoding_whole_prompts_go_in_at_once() -> None:
    from modelservice_runtime.generation.scheduler import PREFILL_BUDGET

    idle = Decoder(slots=8, max_length=8 * PREFILL_BUDGET)
    t = Scheduler(idle, [EOS])
    for rid in range(1, 5):
        t.add(rid, np.ones(2 * PREFILL_BUDGET, np.int64), greedy(2))
    t.step()
    assert idle.prompt_tokens == [8 * PREFILL_BUDGET]  # one run of four whole prompts
    assert idle.prefill_runs == [4]


def test_prompts_arriving_together_are_prefilled_in_one_run_and_a_refused_one_fails_alone() -> None:
    d = Decoder(slots=4)
    s = Scheduler(d, [EOS])
    for rid, first in ((1, 5), (2, 13), (3, 21)):
        s.add(rid, np.array([first, first + 1]), greedy(3))
    results = run(s)
    assert d.prefill_runs == [3]  # three neighbouring free slots: one model run
    for rid, first in ((1, 5), (2, 13), (3, 21)):
        assert tokens_of(results, rid) == [first + 2, first + 3, first + 4]

    d = Decoder(slots=4)
    d.fail_prompt = 13
    s = Scheduler(d, [EOS])
    for rid, first in ((1, 5), (2, 13), (3, 21)):
        s.add(rid, np.array([first, first + 1]), greedy(2))
    results = run(s)
    assert d.prefill_runs[0] == 3 and d.prefill_runs[1:] == [1, 1, 1]  # then one at a time
    assert (2, ERROR) in [f for r in results for f in r.finished]
    assert tokens_of(results, 1) == [7, 8] and tokens_of(results, 3) == [23, 24]


def test_top_logprobs_travel_with_each_token_in_order() -> None:
    """A row asking for top_logprobs gets its most likely tokens for every token, the
    prompt's and the first decode's of one step included, through the packed messages."""
    params = SamplingParams(max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    rid, prompt, back = ipc.unpack_add(ipc.pack_add(7, np.array([5]), params))
    assert (rid, back.top_logprobs, back.logprobs) == (7, 2, True)
    s = Scheduler(Decoder(), [EOS])
    s.add(rid, prompt, back)
    first = s.step()  # the prefill's token and the step's: two tokens of one row
    assert [t for _, t, _ in first.tokens] == [6, 7]
    tops = ipc.unpack_tops(ipc.pack_tops(first))
    assert [r for r, _ in tops] == [7, 7]
    for (_, top), (_, token, lp) in zip(tops, first.tokens, strict=True):
        assert len(top) == 2 and top[0][0] == token  # greedy: the chosen token first
        assert top[0][1] == pytest.approx(lp, abs=1e-6) and top[0][1] >= top[1][1]


def test_a_prompt_sharing_a_running_rows_start_copies_it_and_prefills_the_rest() -> None:
    d = Decoder(slots=4, max_length=256)
    s = Scheduler(d, [EOS])
    system = np.arange(40, dtype=np.int64) % 47
    s.add(1, np.concatenate([system, [5, 6]]), greedy(30))
    s.step()
    s.add(2, np.concatenate([system, [7, 8, 9]]), greedy(3))
    before = len(d.prompt_tokens)
    results = run(s)
    assert d.copies == [(0, 1, 40)]  # the shared start, from row 1's slot into row 2's
    assert d.prompt_tokens[before] == 3  # only its own tokens were prefilled
    assert d.content[1][:43] == [*system.tolist(), 7, 8, 9]
    assert tokens_of(results, 2) == [10, 11, 12]
    assert sum(r.cached_tokens for r in results) == 40


def test_a_freed_rows_cache_serves_the_next_request_in_its_own_slot() -> None:
    d = Decoder(slots=4, max_length=256)
    s = Scheduler(d, [EOS])
    chat = np.arange(50, dtype=np.int64) % 47
    s.add(1, chat, greedy(4))
    first = run(s)
    answer = tokens_of(first, 1)
    # The next turn: the whole history (prompt and answer) and a new question.
    s.add(2, np.concatenate([chat, answer, [3, 4]]), greedy(2))
    before = len(d.prompt_tokens)
    results = run(s)
    held = len(chat) + len(answer) - 1  # the newest answer token never went in
    assert d.copies == [] and d.prompt_tokens[before] == len(chat) + len(answer) + 2 - held
    assert results[0].cached_tokens == held
    assert tokens_of(results, 2) == [5, 6]


def test_a_free_slot_that_rode_along_in_a_decode_run_is_not_reused() -> None:
    d = Decoder(slots=4, max_length=256)
    s = Scheduler(d, [EOS])
    start = np.arange(3, 43, dtype=np.int64)
    s.add(1, np.concatenate([start, [1]]), greedy(1))  # slot 0: ends with its prefill
    s.add(2, np.array([9]), greedy(20))  # slot 1: decodes on, and free slot 0 rides along
    s.step()
    assert d.content[0] == [0]  # the decode run wrote slot 0's position 0
    s.add(3, np.concatenate([start, [2]]), greedy(1))
    results = [s.step()]
    assert d.prompt_tokens[-1] == 41 and results[0].cached_tokens == 0  # prefilled whole
    assert d.copies == []


def test_prefix_index_picks_the_longest_usable_start() -> None:
    from modelservice_runtime.generation.prefixes import PrefixIndex, common_prefix

    a = np.arange(100, dtype=np.int64)
    assert common_prefix(a, a[:60]) == 60 and common_prefix(a, a + 1) == 0
    index = PrefixIndex(4, min_prefix=32)
    index.keep(0, a[:40])
    index.keep(1, a[:20])  # shorter than min_prefix: not kept
    assert index.free[1] is None
    assert index.best(a[:80], {2: a[:70]}) == (2, 70)
    assert index.best(a[:40], {}) == (0, 39)  # the last prompt token must still run
    index.drop(0)
    assert index.best(a[:80], {}) == (-1, 0)
