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


@pytest.mark.slow
def test_export_llm_int4_block_size_reaches_every_4_bit_matmul(
    tiny_llm: tuple[Path, Path], tmp_path: Path
) -> None:
    """--int4-block-size is the builder's MatMulNBits block_size: every 4-bit layer of the
    graph carries it (64: the tiny model's hidden size, which every block must divide)."""
    import onnx

    out = tmp_path / "int4-b64"
    argv = ["export-llm", str(tiny_llm[0]), "-o", str(out), "--precision", "int4"]
    assert main([*argv, "--int4-block-size", "64"]) == 0
    (graph,) = out.glob("*.onnx")
    nodes = [n for n in onnx.load(graph, load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]  # fmt: skip
    assert nodes, "no MatMulNBits in the int4 graph"
    sizes = {a.i for n in nodes for a in n.attribute if a.name == "block_size"}
    assert sizes == {64}


def test_export_llm_refuses_a_block_size_without_int4(
    tiny_llm: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export-llm", str(tiny_llm[0]), "-o", str(tmp_path / "o"), "--precision", "fp32"]
    assert main([*argv, "--int4-block-size", "128"]) == 1
    assert "--int4-block-size applies to --precision int4 only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_llm_refuses_a_folder_without_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-llm", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    assert "not a Hugging Face model folder (no config.json)" in capsys.readouterr().err
