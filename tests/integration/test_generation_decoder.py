"""The engine's decoder on the tests' real tiny model, for what a fake decoder cannot
show: a decoder reopened with another thread count keeps its rows' caches, the choice made
for `--intra-op-threads 0` leaves the answers as they were, a prompt prefilled in parts
gets the tokens it gets whole, and a decode run interrupted part-way changes nothing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.generation import engine_process
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig
from modelservice_runtime.generation.sampling import SamplingParams
from modelservice_runtime.generation.scheduler import Scheduler

PROMPT = np.array([5, 17, 42, 99, 3, 64, 7, 250], np.int64)


def greedy(decoder: Decoder, tokens: int, reopen_after: int | None = None) -> list[int]:
    """`tokens` greedy tokens of PROMPT in slot 0 (slot 1 decodes alongside, unused)."""
    logits = decoder.prefill(0, [PROMPT])
    out = [int(np.argmax(logits[0]))]
    length = len(PROMPT)
    while len(out) < tokens:
        if len(out) == reopen_after:
            decoder.reopen(1)
        step = decoder.decode(np.array([out[-1], 0]), np.array([length, 0]))
        out.append(int(np.argmax(step[0])))
        length += 1
    return out


def test_a_reopened_decoder_keeps_its_rows_caches(tiny_llm: tuple[Path, Path]) -> None:
    config = DecoderConfig.read(tiny_llm[1])
    alone = greedy(Decoder(config, 2, ["CPUExecutionProvider"], 2), 24)
    reopened = Decoder(config, 2, ["CPUExecutionProvider"], 2)
    assert greedy(reopened, 24, reopen_after=12) == alone
    assert reopened.intra_op_threads == 1
    assert len(set(alone)) > 1  # a real sequence, not one token repeated


def test_the_thread_choice_keeps_the_answers(tiny_llm: tuple[Path, Path]) -> None:
    decoder, scheduler = engine_process.build(
        {"folder": str(tiny_llm[1]), "slots": 4, "execution_provider": "cpu"}
    )
    before = greedy(decoder, 16)
    engine_process.choose_threads(decoder)
    # Which count wins is the machine's to say: one, or a thread per CPU it may use.
    assert decoder.intra_op_threads in (1, available_cpus())
    assert greedy(decoder, 16) == before
    assert scheduler.decoder is decoder


def test_a_prompt_prefilled_in_parts_beside_a_decoding_row_gets_its_lone_tokens(
    tiny_llm: tuple[Path, Path],
) -> None:
    """Chunked prefill on the real graph: a 300-token prompt goes in 64 tokens a step while
    another row decodes (riding along in the decode runs between its parts), and its
    greedy tokens equal those of the same prompt prefilled whole, alone."""
    config = DecoderConfig.read(tiny_llm[1])
    prompt = np.random.default_rng(7).integers(3, config.vocab_size - 1, 300).astype(np.int64)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)

    alone = Scheduler(Decoder(config, 4, ["CPUExecutionProvider"], 1), [])
    alone.add(1, prompt, params)
    expected = [t for r in drain(alone) for rid, t, _ in r.tokens if rid == 1]

    decoder = Decoder(config, 4, ["CPUExecutionProvider"], 1)
    parts = Scheduler(decoder, [], prefill_budget=64)
    parts.add(1, PROMPT, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    parts.step()
    parts.add(2, prompt, params)
    results = drain(parts)
    assert [t for r in results for rid, t, _ in r.tokens if rid == 2] == expected
    first = next(i for i, r in enumerate(results) if any(rid == 2 for rid, _, _ in r.tokens))
    assert first >= 4  # 300 tokens at 64 a step: its first token came in the fifth step
    assert all(any(rid == 1 for rid, _, _ in r.tokens) for r in results[:first])


def drain(scheduler: Scheduler) -> list:
    out = []
    while scheduler.busy:
        out.append(scheduler.step())
    return out


def test_prefix_caching_gives_the_tokens_of_a_whole_prefill(tiny_llm: tuple[Path, Path]) -> None:
    """A shared system prompt, on the real graph: a second request while the first runs
    (its start copied from the running row), then the first's next turn (its history from
    the freed row's own slot); each gets the tokens it gets with prefix caching off."""
    config = DecoderConfig.read(tiny_llm[1])
    rng = np.random.default_rng(11)
    system = rng.integers(3, config.vocab_size - 1, 120).astype(np.int64)
    a = np.concatenate([system, rng.integers(3, 300, 9)])
    b = np.concatenate([system, rng.integers(3, 300, 14)])
    # With log-probabilities: a cache off by one position can leave a random model's
    # greedy tokens as they were, not its log-probabilities.
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=True)
    short = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, logprobs=True)

    def tokens(results: list, rid: int) -> list[int]:
        return [t for r in results for i, t, _ in r.tokens if i == rid]

    def logprobs(results: list) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for r in results:
            for i, _, lp in r.tokens:
                out.setdefault(i, []).append(lp)
        return out

    def serve(min_prefix: int | None) -> tuple[list[list[int]], int]:
        s = Scheduler(Decoder(config, 4, ["CPUExecutionProvider"], 1), [], min_prefix=min_prefix)
        s.add(1, a, params)
        results = [s.step()]
        s.add(2, b, short)  # ends first: its slot is above the running row's, kept whole
        results += drain(s)
        history = np.concatenate([a, tokens(results, 1), rng_turn])
        s.add(3, history, params)
        results += drain(s)
        cached = sum(r.cached_tokens for r in results)
        return [tokens(results, rid) for rid in (1, 2, 3)], logprobs(results), cached

    rng_turn = rng.integers(3, 300, 6)
    plain, plain_lp, none_cached = serve(None)
    cached_run, cached_lp, cached = serve(32)
    assert cached_run == plain
    for rid in (1, 2, 3):
        np.testing.assert_allclose(cached_lp[rid], plain_lp[rid], rtol=0, atol=1e-4)
    assert none_cached == 0
    # b's system prompt (120) and the next turn's prompt and answer but the last token.
    assert cached == 120 + len(a) + 10 - 1


def test_an_interrupted_decode_run_changes_nothing(tiny_llm: tuple[Path, Path]) -> None:
    """Every decode step is interrupted from another thread as soon as its run is under
    way (as engine_process.ArrivalWatch does for a new request): the step reports it and
    its rows decode at the next one, with the tokens and log-probabilities of a run never
    interrupted (the redone run writes each row's key and value at the same place)."""
    config = DecoderConfig.read(tiny_llm[1])
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, logprobs=True)
    prompts = {1: PROMPT, 2: PROMPT[::-1].copy(), 3: PROMPT[:5].copy()}

    def run(interrupting: bool) -> tuple[list[tuple[int, int, float]], int]:
        decoder = Decoder(config, 4, ["CPUExecutionProvider"], 1)
        decoder.interruptible = interrupting
        scheduler = Scheduler(decoder, [])
        for rid, prompt in prompts.items():
            scheduler.add(rid, prompt, params)
        tokens, interrupted = [], 0
        while scheduler.busy:
            out = scheduler.admit()
            done, spinning = threading.Event(), threading.Event()

            def spin(done: threading.Event = done, spinning: threading.Event = spinning) -> None:
                spinning.set()
                while not decoder.interrupt() and not done.is_set():
                    pass

            spinner = threading.Thread(target=spin)
            if interrupting and interrupted < 40:  # then let runs end
                spinner.start()
                spinning.wait()
            out = scheduler.decode(out)
            done.set()
            if spinner.is_alive():
                spinner.join()
            interrupted += out.interrupted
            tokens += out.tokens
        return tokens, interrupted

    plain, none = run(interrupting=False)
    tokens, interrupted = run(interrupting=True)
    assert none == 0
    assert interrupted >= 5  # most runs were stopped (one may end before its flag is read)
    assert [t[:2] for t in tokens] == [t[:2] for t in plain]
    np.testing.assert_allclose([t[2] for t in tokens], [t[2] for t in plain], rtol=0, atol=1e-5)
    assert len(tokens) == 3 * 16
