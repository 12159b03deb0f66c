"""The soak's figures: the test writes them to a results file under .cache/; a person
updates docs/reliability.md from it (`make soak` does both, or
`python -m tests.soak_report` after a soak run). A test never writes a tracked file.

Results file: JSON `{"rows": [[measure, value], ...]}`, the table's rows in order.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / ".cache" / "soak" / "results.json"
REPORT = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"

Rows = Sequence[tuple[str, str]]


def write_results(rows: Rows, path: Path = RESULTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [list(r) for r in rows]}, indent=1) + "\n")
    return path


def read_results(path: Path = RESULTS) -> list[tuple[str, str]]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no soak results; run the soak first (make soak)") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(c, str) for c in r) for r in rows
    ):
        raise SystemExit(f'{path}: expected {{"rows": [[measure, value], ...]}} of strings')
    return [(r[0], r[1]) for r in rows]


def table(rows: Rows) -> str:
    return "\n".join(["| measure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)])


def splice(text: str, rows: Rows) -> str:
    """`text` with the block between the soak markers replaced by the table of `rows`
    (appended, markers and all, when the markers are missing)."""
    block = f"{BEGIN}\n{table(rows)}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        return text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    return text.rstrip("\n") + f"\n\n{block}\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="docs/reliability.md's soak table from a soak run")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)
    rows = read_results(args.results)
    report: Path = args.report
    report.write_text(splice(report.read_text() if report.exists() else "# Reliability\n", rows))
    print(f"{report}: soak table from {args.results} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
