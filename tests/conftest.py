"""Shared fixtures: real models exported with torch once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import modelzoo


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_onnx(models_dir: Path) -> Path:
    """MLP, input `input` float32 [batch, 64] -> output `output` float32 [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.mlp(), (1, 64), models_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def cnn_onnx(models_dir: Path) -> Path:
    """CNN, input `input` float32 [batch, 3, 64, 64] -> output `output` float32 [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.cnn(), (1, 3, 64, 64), models_dir / "cnn.onnx")


@pytest.fixture(scope="session")
def encoder_onnx(models_dir: Path) -> Path:
    """Transformer encoder, input `input` float32 [batch, 32, 64] -> `output` [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.encoder(), (1, 32, 64), models_dir / "encoder.onnx")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (marker `soak`, minutes long) run only when asked for: `make soak`
    (`-m soak`), any -m expression naming soak, or MODELSERVICE_SOAK=1. So `make test`
    and a bare `pytest tests` stay bounded without a Makefile change."""
    if os.environ.get("MODELSERVICE_SOAK") == "1" or "soak" in (config.option.markexpr or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture(scope="session")
def tiny_llm() -> tuple[Path, Path]:
    """(Hugging Face folder, onnxruntime-genai fp32 folder) of the tiny random Llama made by
    tests/tinyllm.py and exported with `modelservice export-llm`'s builder run. Cached under
    .cache/test-models by a digest of the recipe: the export takes about a minute."""
    import hashlib

    from tests import tinyllm

    pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("transformers")
    recipe = Path(tinyllm.__file__).read_bytes()
    digest = hashlib.sha256(recipe).hexdigest()[:12]
    root = Path(__file__).resolve().parents[1] / ".cache" / "test-models" / f"tinyllm-{digest}"
    hf, genai = root / "hf", root / "genai-fp32"
    if not (genai / "genai_config.json").is_file():
        from modelservice_runtime.tools.export_llm import build

        tinyllm.make_tiny_llama(hf)
        build(hf, genai, "fp32")
    return hf, genai
