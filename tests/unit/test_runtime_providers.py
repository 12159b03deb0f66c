"""Execution provider selection, CUDA branch included, on any machine: `select_providers`
with the available list passed in, and `OnnxModel` with onnxruntime.get_available_providers
(the boundary the runtime asks) monkeypatched to offer CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from modelservice_runtime.serving.model import ModelLoadError, OnnxModel, select_providers
from modelservice_runtime.settings import Settings
from onnx import TensorProto, helper

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
CPU_BUILD = ["AzureExecutionProvider", CPU]
GPU_BUILD = [TRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("choice", "available", "want"),
    [
        ("auto", GPU_BUILD, [CUDA, CPU]),  # TensorRT is opt-in, never picked by auto
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", CPU_BUILD, [CPU]),
        ("cpu", GPU_BUILD, [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("tensorrt", GPU_BUILD, [TRT, CUDA, CPU]),
    ],
)
def test_select_providers(choice: str, available: list[str], want: list[str]) -> None:
    assert select_providers(choice, available) == want


def test_gpu_mem_limit_goes_to_the_cuda_provider_options() -> None:
    limit = 2 * 1024**3
    cuda = (CUDA, {"gpu_mem_limit": str(limit)})
    assert select_providers("auto", [CUDA, CPU], limit) == [cuda, CPU]
    assert select_providers("cuda", [CUDA, CPU], limit) == [cuda, CPU]
    assert select_providers("tensorrt", GPU_BUILD, limit) == [TRT, cuda, CPU]
    assert select_providers("auto", CPU_BUILD, limit) == [CPU]


@pytest.mark.parametrize("choice", ["cuda", "tensorrt"])
def test_explicit_gpu_provider_missing_is_refused(choice: str) -> None:
    available = [CUDA, CPU] if choice == "tensorrt" else CPU_BUILD
    with pytest.raises(ModelLoadError) as e:
        select_providers(choice, available)
    assert str(e.value) == (
        f"--execution-provider {choice}: this onnxruntime offers only {available}; "
        "install onnxruntime-gpu (pip install 'modelservice[gpu]') on a GPU node"
    )


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def gpu_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """onnxruntime claims CUDA; InferenceSession records the providers it was given and, like
    onnxruntime on a CUDA-less host, runs on what it really has (CPU)."""
    asked: list[Any] = []
    real = onnxruntime.InferenceSession

    def session(path: str, opts: Any = None, providers: Any = None, **kw: Any) -> Any:
        asked.append(providers)
        return real(path, opts, providers=[CPU], **kw)

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return asked


def test_auto_asks_onnxruntime_for_cuda_first_when_offered(
    tiny_model: Path, gpu_onnxruntime: list[Any]
) -> None:
    model = OnnxModel(Settings(model_path=tiny_model, gpu_mem_limit=1 << 30))
    assert gpu_onnxruntime == [[(CUDA, {"gpu_mem_limit": str(1 << 30)}), CPU]]
    assert model.providers == [CPU]  # auto accepts onnxruntime's fallback
    out = model.run({"input": np.array([[-1, 2, -3, 4]], np.float32)})
    np.testing.assert_array_equal(out["output"], [[0, 2, 0, 4]])


def test_explicit_cuda_refuses_a_silent_fallback_to_cpu(
    tiny_model: Path, gpu_onnxruntime: list[Any]
) -> None:
    """CUDA offered, but the session came up on CPU only (missing CUDA libraries): refuse."""
    with pytest.raises(ModelLoadError) as e:
        OnnxModel(Settings(model_path=tiny_model, execution_provider="cuda"))
    assert gpu_onnxruntime == [[CUDA, CPU]]
    assert str(e.value) == (
        "--execution-provider cuda: onnxruntime fell back to ['CPUExecutionProvider'] "
        "(missing CUDA/TensorRT libraries?)"
    )
