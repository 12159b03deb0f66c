"""The batching check in docs/tuning.md runs as printed, on a model the tests export, so the
advice a user copies cannot rot unnoticed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "tuning.md"


def test_the_batching_check_runs_and_prints_samples_per_second(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, "expected one python block in docs/tuning.md"
    # Indented under a list item in the Markdown; 3 s per batch size is for users.
    lines = blocks[0].splitlines()
    indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    script = "\n".join(x[indent:] for x in lines)
    assert "< 3:" in script
    (tmp_path / "check.py").write_text(script.replace("< 3:", "< 0.2:"))
    shutil.copy(mlp_onnx, tmp_path / "model.onnx")
    run = subprocess.run(
        [sys.executable, "check.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    assert [line.split(":")[0].split() for line in printed] == [
        ["batch", "1"],
        ["batch", "8"],
        ["batch", "32"],
    ]
    for line in printed:
        assert float(line.split(":")[1].split()[0].replace(",", "")) > 0, line
