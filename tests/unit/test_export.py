"""`modelservice export`: real torch models -> ONNX, checked with real onnxruntime."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from modelservice_cli import main as cli
from modelservice_runtime.tools.export import (
    ExportError,
    build_module,
    check_numerics,
    export_module,
    parse_input_shape,
    prune_global,
)
from onnx import numpy_helper

from tests import modelzoo
from tests.needs import needed

ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count()


def write_factory_module(directory: Path, body: str) -> str:
    """A throwaway module in `directory` (made the cwd by the caller); returns its name."""
    name = f"user_models_{next(_counter)}"
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = tmp_path, with sys.path restored afterwards (export puts the cwd on it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return tmp_path


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1,3,64,64", (1, 3, 64, 64)), ("1, 64", (1, 64)), ("2x8", (2, 8)), ("4", (4,))],
)
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,a", "1,-3", "0,3", "1,,3", "1.5,2"])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(ExportError, match="--input-shape: expected comma-separated positive"):
        parse_input_shape(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.modelzoo", "expected 'package.module:function'"),
        (":mlp", "expected 'package.module:function'"),
        ("tests.modelzoo:", "expected 'package.module:function'"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("tests.modelzoo:nope", "has no attribute 'nope'"),
        ("tests.modelzoo:__doc__", "is a str, expected a function or class"),
        ("os:getcwd", r"os:getcwd\(\) returned a str, expected a torch.nn.Module"),
    ],
)
def test_bad_factory_errors_name_the_input(spec: str, message: str) -> None:
    with pytest.raises(ExportError, match=message) as info:
        build_module(spec)
    assert str(info.value).startswith("MODULE:FACTORY:")


def test_factory_from_current_directory_and_failing_factory(user_dir: Path) -> None:
    name = write_factory_module(
        user_dir,
        """
        import torch

        def tiny():
            return torch.nn.Linear(4, 2)

        def broken():
            raise RuntimeError("weights file missing")
        """,
    )
    module = build_module(f"{name}:tiny")
    assert isinstance(module, torch.nn.Linear)
    assert not module.training, "the factory's module must be put in eval mode"
    with pytest.raises(ExportError, match=r"calling .*:broken with no arguments failed: Runtime"):
        build_module(f"{name}:broken")


def test_cli_export_mlp_dynamic_batch_and_numerics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mlp.onnx"
    rc = cli.main(["export", "tests.modelzoo:mlp", "--input-shape", "1,64", "-o", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "max abs diff torch vs onnxruntime: batch 1:" in stdout
    assert "batch 3:" in stdout

    sess = session(out)
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[0] == "batch" and inp.shape[1] == 64
    assert sess.get_outputs()[0].name == "output"
    x = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    with torch.no_grad():
        want = modelzoo.mlp()(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"input": x})[0]
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_cli_export_transformer_encoder_dynamic_batch_and_numerics(tmp_path: Path) -> None:
    out = tmp_path / "encoder.onnx"
    rc = cli.main(["export", "tests.modelzoo:encoder", "--input-shape", "1,32,64", "-o", str(out)])
    assert rc == 0
    sess = session(out)
    (inp,) = sess.get_inputs()
    assert inp.shape[0] == "batch" and inp.shape[1:] == [32, 64]
    x = np.random.default_rng(3).standard_normal((5, 32, 64)).astype(np.float32)
    with torch.no_grad():
        want = modelzoo.encoder()(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"input": x})[0]
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_cli_export_custom_names_and_opset(tmp_path: Path) -> None:
    out = tmp_path / "cnn.onnx"
    rc = cli.main(
        [
            *("export", "tests.modelzoo:cnn", "--input-shape", "1,3,32,32", "-o", str(out)),
            *("--opset", "18", "--input-name", "images", "--output-name", "logits"),
            *("--check-samples", "1"),
        ]
    )
    assert rc == 0
    model = onnx.load(str(out))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}
    sess = session(out)
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    got = sess.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert got.shape == (2, 10)


def test_prune_reaches_requested_sparsity_and_survives_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned.onnx"
    rc = cli.main(
        ["export", "tests.modelzoo:mlp", "--input-shape", "1,64", "-o", str(out), "--prune", "0.6"]
    )
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "sparsity 60.0%, requested 60.0%" in stdout
    # The zeros are real weights in the file (pruning made permanent, no masks exported).
    model = onnx.load(str(out))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 2]
    total = sum(w.size for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    assert not [t.name for t in model.graph.initializer if "mask" in t.name or "orig" in t.name]


def test_prune_global_reports_and_validates() -> None:
    module = modelzoo.cnn()
    report = prune_global(module, 0.3)
    assert report.total == sum(
        m.weight.numel()
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    )
    assert report.sparsity == pytest.approx(0.3, abs=0.01)
    assert not any(name.endswith("_mask") for name, _ in module.named_buffers())
    with pytest.raises(ExportError, match=r"--prune: expected a fraction in \[0, 1\)"):
        prune_global(module, 1.5)
    with pytest.raises(ExportError, match="no Linear or Conv layers"):
        prune_global(torch.nn.ReLU(), 0.5)


def test_numerics_mismatch_fails_with_clear_message(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module whose ONNX graph cannot reproduce torch (fresh random noise each call)."""
    name = write_factory_module(
        user_dir,
        """
        import torch

        class Noisy(torch.nn.Module):
            def forward(self, x):
                return x + torch.rand_like(x)

        def noisy():
            return Noisy()
        """,
    )
    out = user_dir / "noisy.onnx"
    rc = cli.main(["export", f"{name}:noisy", "--input-shape", "1,16", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "max abs diff torch vs onnxruntime" in captured.out
    assert "numerics check failed: max abs diff" in captured.err
    assert "exceeds --atol 0.0001" in captured.err


def test_forward_error_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.onnx")
    rc = cli.main(["export", "tests.modelzoo:mlp", "--input-shape", "1,65", "-o", out])
    err = capsys.readouterr().err
    assert rc == 1
    assert "exporting tests.modelzoo:mlp with --input-shape 1,65 failed" in err
    assert len(err.strip().splitlines()) == 1


def test_export_module_keeps_its_signature_and_check_numerics(mlp_onnx: Path) -> None:
    report = check_numerics(modelzoo.mlp(), mlp_onnx, (1, 64), samples=2)
    assert set(report.max_abs_diff) == {1, 3}
    assert report.ok and report.worst < 1e-4


def test_tuple_outputs_get_indexed_names(tmp_path: Path) -> None:
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(dim=1)

    out = export_module(Two().eval(), (1, 5), tmp_path / "two.onnx", output_name="y")
    sess = session(out)
    assert [o.name for o in sess.get_outputs()] == ["y_0", "y_1"]
    a, b = sess.run(None, {"input": np.ones((4, 5), np.float32)})
    assert a.shape == (4, 5) and b.shape == (4,)
    assert check_numerics(Two().eval(), out, (1, 5)).ok


@pytest.mark.slow
def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = ROOT / ".cache" / "venv" / "bin" / "modelservice"
    if not exe.exists():
        needed(f"the console script {exe} is not installed (make venv)")
    out = tmp_path / "cnn.onnx"
    proc = subprocess.run(
        [str(exe), "export", "tests.modelzoo:cnn", "--input-shape", "1,3,64,64", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "max abs diff torch vs onnxruntime" in proc.stdout
    assert session(out).run(None, {"input": np.zeros((3, 3, 64, 64), np.float32)})[0].shape == (
        3,
        10,
    )


def test_missing_torch_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The runtime image has no torch: export says which extra brings it, no traceback."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(SystemExit) as exc:
        cli.main(
            ["export", "tests.modelzoo:mlp", "--input-shape", "1,64", "-o", str(tmp_path / "m")]
        )
    assert str(exc.value) == (
        "modelservice export: missing dependency (torch); "
        "install it with: pip install 'modelservice[export]'"
    )
