"""The engine's decoder on the tests' real tiny model, for what a fake decoder cannot
show: a decoder reopened with another thread count keeps its rows' caches, the choice made
for `--intra-op-threads 0` leaves the answers as they were, and a prompt prefilled in parts
gets the tokens it gets whole."""

from __future__ import annotations

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
