"""tests/soak_report.py: the soak's results file and the docs table made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import soak_report
from tests.soak_report import BEGIN, END, main, read_results, splice, write_results

ROWS = [("duration", "120 s"), ("errors", "0")]


def test_results_round_trip_under_the_given_path(tmp_path: Path) -> None:
    path = write_results(ROWS, tmp_path / "soak" / "results.json")
    assert json.loads(path.read_text()) == {"rows": [["duration", "120 s"], ["errors", "0"]]}
    assert read_results(path) == ROWS


def test_the_default_results_file_is_under_cache_not_docs() -> None:
    assert soak_report.RESULTS.relative_to(soak_report.REPO).parts[0] == ".cache"


def test_splice_replaces_only_the_marked_block() -> None:
    text = f"# R\n\nbefore\n\n{BEGIN}\n| old | table |\n{END}\n\nafter\n"
    out = splice(text, ROWS)
    assert out == (
        f"# R\n\nbefore\n\n{BEGIN}\n| measure | value |\n| --- | --- |\n"
        f"| duration | 120 s |\n| errors | 0 |\n{END}\n\nafter\n"
    )
    assert splice(out, ROWS) == out


def test_splice_appends_the_block_when_the_markers_are_missing() -> None:
    out = splice("# Reliability\n\ntext\n", ROWS)
    assert out.startswith("# Reliability\n\ntext\n\n" + BEGIN + "\n")
    assert out.endswith(f"| errors | 0 |\n{END}\n")


@pytest.mark.parametrize(
    "content",
    ['{"rows": [["only one"]]}', '{"rows": [["a", 1]]}', "[]", '{"table": []}'],
)
def test_malformed_results_are_refused_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=r"results\.json: expected"):
        read_results(path)


def test_missing_results_say_to_run_the_soak(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no soak results; run the soak first"):
        read_results(tmp_path / "absent.json")


def test_main_writes_the_report_it_is_given(tmp_path: Path) -> None:
    results = write_results(ROWS, tmp_path / "results.json")
    report = tmp_path / "reliability.md"
    report.write_text(f"# Reliability\n\n{BEGIN}\nstale\n{END}\n")
    assert main(["--results", str(results), "--report", str(report)]) == 0
    assert "| duration | 120 s |" in report.read_text()
    assert "stale" not in report.read_text()
