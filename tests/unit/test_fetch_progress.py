"""The progress line's one format (fetch/progress.py), and the Progress meter driven by a
fake clock and a log that records what it is given."""

from __future__ import annotations

import pytest
from modelservice_runtime.fetch.progress import Progress, format_line, human_bytes

MIB = 1 << 20


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * MIB, "5.0 MiB"), (3 << 30, "3.0 GiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_the_documented_lines() -> None:
    """The examples in docs/models.md, character for character."""
    assert (
        format_line("model.onnx", 13107200, 104857600, 4.2 * MIB)
        == "progress model.onnx: 13107200 of 104857600 bytes (12.5 MiB of 100.0 MiB, 12%), "
        "4.2 MiB/s, ETA 21 s"
    )
    assert (
        format_line("model.onnx", 13107200, None, 4.2 * MIB)
        == "progress model.onnx: 13107200 bytes (12.5 MiB), 4.2 MiB/s, total unknown"
    )
    assert (
        format_line("model.onnx", 104857600, 104857600, 5 * MIB, elapsed=20.0)
        == "progress model.onnx: 104857600 of 104857600 bytes (100.0 MiB of 100.0 MiB, 100%), "
        "5.0 MiB/s, done in 20 s"
    )


def test_eta_units_and_a_stall() -> None:
    assert format_line("m", 0, 600 * MIB, MIB).endswith("ETA 10 min 00 s")
    assert format_line("m", 0, 7200 * MIB, MIB).endswith("ETA 2 h 00 min")
    assert format_line("m", 10, 100, 0.0).endswith("0 B/s, ETA unknown")
    assert format_line("m", 0, 0, 0.0, elapsed=0.1).endswith(
        "(0 B of 0 B, 100%), 0 B/s, done in 1 s"
    )


def test_the_last_line_gives_the_average_and_an_error_prints_none() -> None:
    now = [100.0]
    lines: list[str] = []
    with Progress("m", 4 * MIB, lines.append, interval=3600, clock=lambda: now[0]) as p:
        p.add(2 * MIB)
        p.add(2 * MIB)
        now[0] = 102.0
    assert lines == [
        "progress m: 4194304 of 4194304 bytes (4.0 MiB of 4.0 MiB, 100%), 2.0 MiB/s, done in 2 s"
    ]
    lines.clear()
    with pytest.raises(OSError), Progress("m", None, lines.append, interval=3600):
        raise OSError("disk full")
    assert lines == []
