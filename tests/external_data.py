"""A few-MB ONNX model with its weights in an external data file, built with onnx.helper.

The shape of every large model (a `model.onnx` beside data files, as ONNX's 2 GiB
protobuf limit forces), small enough for the suite: y = x @ W + b, W [F, F] float32 in
`weights.bin` (F=1024: 4 MiB), so a runtime that failed to resolve the external data
could not answer at all, and one that answered from the wrong weights would differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = 1024
INPUT, OUTPUT = "x", "y"
DATA_FILE = "weights.bin"


def weights(features: int = FEATURES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(18)
    w = (rng.standard_normal((features, features)) / np.sqrt(features)).astype(np.float32)
    b = rng.standard_normal(features).astype(np.float32)
    return w, b


def expected(x: np.ndarray, features: int = FEATURES) -> np.ndarray:
    w, b = weights(features)
    return x @ w + b


def write_model(
    folder: Path, filename: str = "model.onnx", features: int = FEATURES, data_file: str = DATA_FILE
) -> Path:
    """Write the model into `folder` (created) as `filename` + `data_file`; return the
    model file's path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weights(features)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [INPUT, "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [OUTPUT]),
        ],
        "external-data",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", features])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the pinned onnxruntime reads
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file,
        size_threshold=0,
    )
    return path
