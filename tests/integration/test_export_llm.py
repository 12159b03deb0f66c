"""`modelservice export-llm` on the tiny random Llama: the builder's folder, the greedy check,
the int4 report against fp32."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from modelservice_cli.main import main

from tests.integration.runtime_server import serve


@pytest.mark.slow
def test_export_llm_int4_reports_size_and_agreement_with_fp32(
    tiny_llm: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int4"
    assert main(["export-llm", str(tiny_llm[0]), "-o", str(out), "--precision", "int4"]) == 0
    printed = capsys.readouterr().out
    assert (out / "genai_config.json").is_file()
    assert "check: greedy generation of 16 tokens on 4 prompts: ok" in printed
    assert "int4 vs fp32:" in printed and "greedy tokens agreeing with fp32" in printed

    def size(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    assert size(out) < size(tiny_llm[1])  # the int4 folder is smaller than the fp32 one
    # and it serves: a greedy completion through the server
    with serve(out, "--name", "tiny4") as served:
        r = httpx.post(
            served.url + "/v1/completions",
            json={"model": "tiny4", "prompt": "Hello", "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_export_llm_refuses_a_folder_without_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-llm", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    assert "not a Hugging Face model folder (no config.json)" in capsys.readouterr().err
