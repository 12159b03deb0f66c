"""Incremental detokenization with a real byte-level BPE tokenizer: the deltas join to the
decode of the whole sequence, token by token and in chunks, with multi-byte characters."""

from __future__ import annotations

import pytest
from modelservice_runtime.generation.detokenize import IncrementalDecoder, TextAssembler

from tests.needs import needed_module

tokenizers = needed_module("tokenizers")

TEXT = "Grüße, naïve café! 東京 🚀 tokens  spaced\tout. " * 3


@pytest.fixture(scope="module")
def tok() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    t.train_from_iterator(["The quick brown fox, café."] * 10, trainer)
    return t


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_deltas_join_to_the_whole_decode(tok: object, chunk: int) -> None:
    ids = tok.encode(TEXT).ids  # type: ignore[attr-defined]
    decode = tok.decode  # type: ignore[attr-defined]
    inc = IncrementalDecoder(decode)
    parts = [inc.add(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    parts.append(inc.flush())
    assert "".join(parts) == decode(ids) == TEXT
    assert all("\ufffd" not in p for p in parts)  # split characters waited for their rest


def test_the_decoded_window_stays_short(tok: object) -> None:
    ids = tok.encode(TEXT * 20).ids  # type: ignore[attr-defined]
    longest = 0

    def decode(window: list[int]) -> str:
        nonlocal longest
        longest = max(longest, len(window))
        return tok.decode(window)  # type: ignore[attr-defined]

    inc = IncrementalDecoder(decode)
    for t in ids:
        inc.add([t])
    assert longest <= 8  # flat in the length of the text


def test_stop_strings_with_chunks(tok: object) -> None:
    ids = tok.encode("one two three four").ids  # type: ignore[attr-defined]
    a = TextAssembler(tok.decode, ("thr", "four"))  # type: ignore[attr-defined]
    out = "".join(a.add(ids[i : i + 3]) for i in range(0, len(ids), 3)) + a.finish()
    assert a.stopped and out == a.text == "one two "
