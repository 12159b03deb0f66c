"""`modelservice quantize`: real torch-exported models quantized by real onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelservice_cli import main as cli
from modelservice_runtime.tools.quantize import QuantizeError, quantize_model, sample_inputs


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_quantize_mlp_reports_size_and_accuracy(
    mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mlp.int8.onnx"
    rc = cli.main(["quantize", str(mlp_onnx), str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout

    size = re.search(r"size: (\d+) -> (\d+) bytes \((\d\.\d\d)x", stdout)
    assert size, stdout
    before, after = int(size[1]), int(size[2])
    assert before == mlp_onnx.stat().st_size and after == out.stat().st_size
    assert after < 0.4 * before, "int8 weights should be ~4x smaller than float32"
    diff = re.search(r"output 'output': max abs diff ([0-9.e+-]+), top-1 agreement", stdout)
    assert diff, stdout
    assert 0 < float(diff[1]) < 0.1
    assert "over 16 random samples" in stdout

    # The result is a real int8 model that still has the dynamic batch axis.
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops
    got = session(out).run(None, {"input": np.zeros((5, 64), np.float32)})[0]
    assert got.shape == (5, 10)


def test_quantize_cnn_per_channel_keeps_top1(cnn_onnx: Path, tmp_path: Path) -> None:
    report = quantize_model(cnn_onnx, tmp_path / "cnn.int8.onnx", per_channel=True, samples=32)
    assert report.size_after < 0.5 * report.size_before
    (out,) = report.outputs
    assert out.name == "output"
    assert out.top1_total == 32
    assert out.top1_agreement is not None and out.top1_agreement >= 0.9
    assert out.max_abs_diff < 0.1
    float_sess, int8_sess = session(cnn_onnx), session(tmp_path / "cnn.int8.onnx")
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        int8_sess.run(None, {"input": x})[0], float_sess.run(None, {"input": x})[0], atol=0.1
    )


def test_sample_inputs_follow_metadata_with_dynamic_dims_as_one(cnn_onnx: Path) -> None:
    feeds = sample_inputs(session(cnn_onnx), 3)
    assert len(feeds) == 3
    assert all(f["input"].shape == (1, 3, 64, 64) for f in feeds)
    assert all(f["input"].dtype == np.float32 for f in feeds)


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    rc = cli.main(["quantize", str(tmp_path / "nope.onnx"), str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "IN.onnx:" in err and "does not exist" in err
    assert not out.exists()


def test_non_onnx_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf")
    out = tmp_path / "out.onnx"
    rc = cli.main(["quantize", str(bad), str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"IN.onnx: {bad} is not a valid ONNX model" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad], "no temp file may be left behind"


def test_directory_input_and_same_output(mlp_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match=r"IN\.onnx: .* is not a file"):
        quantize_model(tmp_path, tmp_path / "o.onnx")
    with pytest.raises(QuantizeError, match=r"OUT\.onnx: must differ from IN\.onnx"):
        quantize_model(mlp_onnx, mlp_onnx)


def test_samples_zero_skips_comparison(
    mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["quantize", str(mlp_onnx), str(tmp_path / "q.onnx"), "--samples", "0"])
    stdout = capsys.readouterr().out
    assert rc == 0 and "size:" in stdout and "max abs diff" not in stdout
    assert cli.main(["quantize", str(mlp_onnx), str(tmp_path / "q.onnx"), "--samples", "-1"]) == 1
