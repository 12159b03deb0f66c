"""A newcomer's first mistakes outside `serve` (tests/integration/test_serve_first_mistakes.py
has serve's): each message names the next step. The model-path rules of serve's preflight
are checked here too, on files made in the test."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from modelservice_cli.main import main
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.process import preflight
from modelservice_runtime.serving.protocol import v1

from tests import explain_models


def test_sniff_tells_the_usual_wrong_files_and_passes_onnx(tmp_path: Path) -> None:
    onnx_file = explain_models.linear(tmp_path / "m.onnx", np.eye(2), np.zeros(2))
    assert preflight.sniff(onnx_file) is None
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    assert "pickle" in (preflight.sniff(pickle) or "")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((2).to_bytes(8, "little") + b"{}")
    assert "safetensors" in (preflight.sniff(weights) or "")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert preflight.sniff(tmp_path / "empty.onnx") == "an empty file"


def test_check_model_accepts_onnx_files_and_folders_and_genai_folders(tmp_path: Path) -> None:
    model = explain_models.linear(tmp_path / "m.onnx", np.eye(2), np.zeros(2))
    preflight.check_model(model)
    preflight.check_model(tmp_path)  # its only .onnx
    genai = tmp_path / "g"
    genai.mkdir()
    (genai / "genai_config.json").write_text("{}")
    (genai / "config.json").write_text("{}")  # the builder copies it too
    preflight.check_model(genai)
    with pytest.raises(preflight.PreflightError, match=r"no genai_config.json.* export-llm"):
        preflight.check_model(tmp_path, "genai")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(preflight.PreflightError, match=r"no model file .*modelservice export"):
        preflight.check_model(empty)


def test_listen_errors_name_what_to_change() -> None:
    def line(code: int) -> str:
        return preflight.listen_error("10.9.9.9", 80, OSError(code, "x"))

    assert "--port 81" in line(errno.EADDRINUSE)
    assert "--host 127.0.0.1" in line(errno.EADDRNOTAVAIL)
    assert "--port 8080" in line(errno.EACCES)


def test_a_v2_body_on_the_v1_route_points_at_v2_and_instances() -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    )
    with pytest.raises(BadRequest) as e:
        v1.parse_predict_request(body, [("input", np.dtype(np.float32))])
    message = str(e.value)
    assert "Open Inference Protocol (V2) tensor" in message
    assert "/v2/models/{model}/infer" in message and '{"instances": [row, ...]}' in message
    with pytest.raises(BadRequest, match=r"instances: instance keys \['x'\] do not match"):
        v1.parse_predict_request(b'{"instances": [{"x": 1}]}', [("input", np.dtype(np.float32))])


def test_export_llm_names_a_missing_input_and_refuses_a_non_empty_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-llm", str(tmp_path / "my-lama"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'my-lama'}: does not exist" in err and "make_tiny_llm.py" in err
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = tmp_path / "served"
    out.mkdir()
    (out / "genai_config.json").write_text("{}")
    assert main(["export-llm", str(hf), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the folder is not empty" in err and "--force" in err
    assert (out / "genai_config.json").read_text() == "{}"  # untouched


@pytest.mark.slow  # the model builder starts (transformers, torch) before it refuses
def test_export_llm_force_failing_leaves_the_output_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    out = tmp_path / "served"
    out.mkdir()
    (out / "genai_config.json").write_text("{}")
    assert main(["export-llm", str(hf), "-o", str(out), "--force"]) == 1
    assert "model builder failed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "served"]  # nothing left over
    assert (out / "genai_config.json").read_text() == "{}"


def test_operator_without_kopf_gives_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("kopf", "kopf.cli"):
        monkeypatch.setitem(sys.modules, name, None)  # import kopf raises ImportError
    with pytest.raises(SystemExit, match=r"pip install 'modelservice\[operator\]'"):
        main(["operator", "--help"])


def test_help_says_what_demo_does_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["demo"], ["export"], ["explain"], ["export-llm"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "local Kubernetes control plane it starts" in text
    for shown in ("(default 20)", "ONNX opset version (default", "check (default 2)",
                  "outputs (default", "--force", "examples/make_models.py"):  # fmt: skip
        assert shown in text, shown


def test_export_llm_publish_swaps_the_checked_folder_in_whole(tmp_path: Path) -> None:
    from modelservice_runtime.tools.export_llm import publish

    out = tmp_path / "served"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    staged = tmp_path / "staging" / "served"
    staged.mkdir(parents=True)
    (staged / "genai_config.json").write_text("{}")
    publish(staged, out)
    assert sorted(p.name for p in out.iterdir()) == ["genai_config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served", "staging"]  # no old copy
