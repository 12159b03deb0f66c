"""Which file a model directory serves (model_files.locate), and refusals that name files."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelservice_runtime.model_files import ModelFileError, locate


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_file_is_itself(tmp_path: Path) -> None:
    f = touch(tmp_path / "resnet.onnx")
    assert locate(f) == f


def test_model_onnx_wins_over_other_onnx_files(tmp_path: Path) -> None:
    touch(tmp_path / "model-int8.onnx")
    touch(tmp_path / "weights.bin")
    model = touch(tmp_path / "model.onnx")
    assert locate(tmp_path) == model


def test_the_only_onnx_file(tmp_path: Path) -> None:
    touch(tmp_path / "weights.bin")
    model = touch(tmp_path / "big.onnx")
    assert locate(tmp_path) == model


def test_tritons_layout(tmp_path: Path) -> None:
    inner = touch(tmp_path / "model.onnx" / "model.onnx")
    touch(tmp_path / "model.onnx" / "weights.bin")
    touch(tmp_path / "config.pbtxt")
    assert locate(tmp_path) == inner
    # A Triton folder whose file has another name: its only .onnx file.
    other = touch(tmp_path / "other" / "model.onnx" / "exported.onnx")
    assert locate(tmp_path / "other") == other


def test_ambiguous_folder_is_refused_naming_the_files(tmp_path: Path) -> None:
    touch(tmp_path / "a.onnx")
    touch(tmp_path / "b.onnx")
    with pytest.raises(ModelFileError) as e:
        locate(tmp_path)
    message = str(e.value)
    assert "ambiguous: 2 .onnx files (a.onnx, b.onnx) and none named model.onnx" in message
    assert str(tmp_path) in message


def test_nothing_to_serve(tmp_path: Path) -> None:
    touch(tmp_path / "weights.bin")
    with pytest.raises(ModelFileError, match=r"no model file in the directory: expected model"):
        locate(tmp_path)
    with pytest.raises(ModelFileError, match=r"nope: does not exist"):
        locate(tmp_path / "nope")
