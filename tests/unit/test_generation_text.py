"""TextAssembler: deltas join to the whole text; stop strings cut it and are never sent."""

from __future__ import annotations

from modelservice_runtime.serving.generation import TextAssembler

WORDS = ["He", "llo", ",", " wo", "rld", "!", " STO", "P", " after"]


def decode(ids: list[int]) -> str:
    return "".join(WORDS[i] for i in ids)


def feed(stop: tuple[str, ...]) -> tuple[list[str], TextAssembler]:
    a = TextAssembler(decode, stop)
    deltas = []
    for i in range(len(WORDS)):
        deltas.append(a.add(i))
        if a.stopped:
            break
    deltas.append(a.finish())
    return deltas, a


def test_without_stop_the_deltas_join_to_the_text() -> None:
    deltas, a = feed(())
    assert "".join(deltas) == "Hello, world! STOP after" == a.text
    assert not a.stopped


def test_a_stop_string_split_over_tokens_is_held_back_and_cut() -> None:
    deltas, a = feed(("STOP",))
    assert a.stopped
    assert "".join(deltas) == "Hello, world! " == a.text
    assert all("S" not in d for d in deltas)  # no part of the stop string went out


def test_a_broken_character_waits_for_the_rest() -> None:
    pieces = {0: b"caf", 1: b"\xc3", 2: b"\xa9!"}
    a = TextAssembler(lambda ids: b"".join(pieces[i] for i in ids).decode(errors="replace"), ())
    assert [a.add(0), a.add(1), a.add(2), a.finish()] == ["caf", "", "é!", ""]
