"""The engine's intra-op thread choice on the tests' real tiny model: a decoder reopened
with another thread count keeps its rows' caches, and the choice made for
`--intra-op-threads 0` leaves the answers as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.generation import engine_process
from modelservice_runtime.generation.decoder import Decoder, DecoderConfig

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
