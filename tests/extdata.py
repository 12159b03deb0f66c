"""Small models with external data (the layout of every model above 2 GiB), built with
onnx.helper and saved with save_as_external_data, for the fetch and loading tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IN, HIDDEN, OUT = 256, 1024, 256  # two float32 weights of 1 MiB each
MIB = 1 << 20
ALIGN = 1 << 16  # each streamed weight starts on a 64 KiB boundary (mappable on any OS)


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


def matmul_chain(root: Path, dim: int, layers: int, *, external: bool = True) -> Path:
    """root/model.onnx: `layers` MatMuls of [dim, dim] float32 weights, uniform with variance
    1/dim (activations keep their scale). External: weights streamed to root/weights.bin a
    few MiB at a time; inline: one protobuf (only below 2 GiB, built in memory)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bound = np.float32(np.sqrt(3.0 / dim))
    rows = max(1, (8 * MIB) // (4 * dim))
    inits = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(root / "weights.bin", "wb")) if external else None
        for i in range(layers):
            if out is not None:
                offset = out.tell()
                for start in range(0, dim, rows):
                    n = min(rows, dim - start)
                    chunk = rng.random((n, dim), dtype=np.float32) * (2 * bound) - bound
                    out.write(chunk.tobytes())
                length = out.tell() - offset
                out.write(b"\0" * (-out.tell() % ALIGN))
                t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim])
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", "weights.bin"), ("offset", offset),
                                   ("length", length)):  # fmt: skip
                    entry = t.external_data.add()
                    entry.key, entry.value = key, str(value)
                inits.append(t)
            else:
                w = rng.random((dim, dim), dtype=np.float32) * (2 * bound) - bound
                inits.append(numpy_helper.from_array(w, f"w{i}"))
    names = ["x", *[f"h{i}" for i in range(layers - 1)], "y"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]]) for i in range(layers)],
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = root / "model.onnx"
    onnx.save_model(model, str(path))
    return path
