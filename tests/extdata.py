"""Small models with external data (the layout of every model above 2 GiB), built with
onnx.helper and saved with save_as_external_data, for the fetch and loading tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IN, HIDDEN, OUT = 256, 1024, 256  # two float32 weights of 1 MiB each


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((IN, HIDDEN), dtype=np.float32) / 16
    w2 = rng.standard_normal((HIDDEN, OUT), dtype=np.float32) / 32
    return w1, w2


def graph_model(seed: int = 0) -> onnx.ModelProto:
    """y = relu(x @ w1) @ w2, x float32 [N, 256] -> y float32 [N, 256]."""
    w1, w2 = weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "extdata",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def expected(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w1, w2 = weights(seed)
    return np.maximum(x @ w1, 0) @ w2


def save_external(
    root: Path, *, location: str = "data/weights.bin", one_file: bool = True, seed: int = 0
) -> Path:
    """root/model.onnx with its weights in root/<location> (or a file per tensor)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / location).parent.mkdir(parents=True, exist_ok=True)
    path = root / "model.onnx"
    onnx.save_model(
        graph_model(seed),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location=location,
        size_threshold=0,
    )
    return path


def set_location(model: Path, tensor: str, location: str) -> None:
    """Rewrite one tensor's external-data location in place (a crafted, hostile model)."""
    proto = onnx.load(str(model), load_external_data=False)
    for init in proto.graph.initializer:
        if init.name == tensor:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save_model(proto, str(model))
