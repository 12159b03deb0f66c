"""The marked sections of docs/benchmarks.md: each bench rewrites only its own.

A section runs from its BEGIN marker to its END marker (HTML comments, invisible in the
rendered page); a bench whose markers are not there yet appends its section at the end.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(text: str, begin: str, end: str, doc: Path = BENCHMARKS_MD) -> Path:
    """Put `text` (which holds both markers) in place of the section between `begin` and
    `end` in `doc`, or after everything else when the section is new."""
    current = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + text.strip() + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + text
    doc.write_text(current)
    return doc


def marked_sections(text: str) -> list[str]:
    """Every marked section of `text` (from its BEGIN to its END marker), in order: what a
    bench that rewrites the whole document keeps."""
    import re

    pattern = r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->"
    return [m.group(0) for m in re.finditer(pattern, text, flags=re.S)]
