"""`modelservice serve DIR`: a model with external data files served from its folder, by a
real `modelservice serve` on loopback, answers like numpy on the same weights."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import external_data
from tests.integration.runtime_server import serve, serve_command


def infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": external_data.INPUT,
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == external_data.OUTPUT
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def layout(kind: str, root: Path) -> Path:
    """A model folder in one of the layouts serve accepts; returns the folder."""
    if kind == "model.onnx":
        external_data.write_model(root)
    elif kind == "only-onnx":
        external_data.write_model(root, "exported.onnx", data_file="exported.data")
    else:  # Triton's: model.onnx/ is the folder holding the file
        external_data.write_model(root / "model.onnx")
        (root / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    return root


@pytest.mark.parametrize("kind", ["model.onnx", "only-onnx", "triton"])
def test_a_directory_serves_its_model_with_external_data(kind: str, tmp_path: Path) -> None:
    folder = layout(kind, tmp_path / "m")
    data_files = sorted(p.name for p in folder.rglob("*") if p.suffix in (".bin", ".data"))
    assert data_files, "the model's weights must be in an external data file"
    x = np.random.default_rng(1).standard_normal((3, external_data.FEATURES)).astype(np.float32)
    with serve(folder, "--name", "big") as served:
        got = infer(served.url, "big", x)
        meta = httpx.get(f"{served.url}/v2/models/big", timeout=10).json()
    assert meta["inputs"][0]["shape"] == [-1, external_data.FEATURES]
    np.testing.assert_allclose(got, external_data.expected(x), rtol=1e-4, atol=1e-4)


def test_a_moved_folder_still_finds_its_data(tmp_path: Path) -> None:
    """External data is resolved beside the model file, wherever the folder now is."""
    folder = layout("model.onnx", tmp_path / "a")
    moved = tmp_path / "deep" / "b"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    x = np.ones((1, external_data.FEATURES), dtype=np.float32)
    with serve(moved) as served:  # the served name defaults to the folder's: b
        np.testing.assert_allclose(
            infer(served.url, "b", x), external_data.expected(x), rtol=1e-4, atol=1e-4
        )


def run_serve(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*serve_command(), "serve", str(path), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_ambiguous_folder_is_refused_naming_the_files(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    external_data.write_model(folder, "fp32.onnx", data_file="fp32.bin")
    external_data.write_model(folder, "int8.onnx", data_file="int8.bin")
    done = run_serve(folder)
    assert done.returncode == 1, done.stderr
    assert (
        "ambiguous: 2 .onnx files (fp32.onnx, int8.onnx) and none named model.onnx" in done.stderr
    ), done.stderr


def test_missing_external_data_fails_the_load_naming_the_file(tmp_path: Path) -> None:
    folder = layout("model.onnx", tmp_path / "m")
    (folder / external_data.DATA_FILE).unlink()
    done = run_serve(folder)
    assert done.returncode == 1, done.stderr
    # Refused by the external-data check before onnxruntime opens anything.
    data = folder / external_data.DATA_FILE
    assert (
        f"model {folder / 'model.onnx'}: tensor 'w': external data '{external_data.DATA_FILE}': "
        f"{data} does not exist" in done.stderr
    ), done.stderr
