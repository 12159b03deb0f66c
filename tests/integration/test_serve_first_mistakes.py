"""`modelservice serve` on a newcomer's first mistakes, as a real process: each is one line
on stderr naming the next step, printed before anything starts (no "Uvicorn running", no
settings dump), with exit code 1."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.integration.runtime_server import serve_command


def run_serve(model: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*serve_command(), "serve", str(model), "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be one line and nothing started."""
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Uvicorn running" not in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("model.pt", b"PK\x03\x04rest-of-a-torch-zip", "a zip archive, as torch.save writes"),
        ("README.md", b"# My model\n\nIt is great.\n", "a text file (.md)"),
        ("x.npy", None, "a NumPy array: a request's input"),
    ],
)
def test_a_file_that_is_not_onnx_names_modelservice_export(
    tmp_path: Path, name: str, content: bytes | None, what: str
) -> None:
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(64, np.float32))
    else:
        path.write_bytes(content)
    line = one_line(run_serve(path, "--port", "0"))
    assert f"{path}: not an ONNX model ({what}" in line
    if name.endswith(".npy"):
        assert "send the array in a request, or explain it: modelservice explain" in line
    else:
        assert "modelservice export MODULE:FACTORY --input-shape" in line


def test_a_hugging_face_folder_names_export_llm(tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    line = one_line(run_serve(folder, "--port", "0"))
    assert "a Hugging Face model folder (config.json)" in line
    assert f"modelservice export-llm {folder} -o my-llama-genai" in line


def test_a_missing_model_path_is_checked_before_starting(tmp_path: Path) -> None:
    line = one_line(run_serve(tmp_path / "mlp.onnx", "--port", "0"))
    assert f"{tmp_path / 'mlp.onnx'}: does not exist" in line and "modelservice export" in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_naming_another_port(mlp_onnx: Path, workers: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = one_line(run_serve(mlp_onnx, "--port", str(port), "--workers", workers))
    assert line.startswith(f"modelservice serve: cannot listen on 127.0.0.1:{port}: ")
    assert "Address already in use" in line and f"--port {port + 1}" in line
