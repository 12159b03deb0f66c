"""Make the models and inputs the quick starts use, offline and without torch.

    python examples/make_models.py [DIR]        # default: the current directory

writes into DIR:

- `mlp.onnx`: a tabular model, 64 features -> 10 scores (64-256-256-10, ReLU, fixed random
  weights), input `input` [N, 64], output `output` [N, 10]; what README.md serves.
- `mlp-x.npy`: one row for it, shape (64,) (one instance: no batch axis).
- `cnn.onnx`: an image model, input `input` [N, 3, 32, 32] (RGB, values 0..1) -> output
  `output` [N, 2]: the scores of "red" and "green". Its weights are set by hand, not
  trained: class 0 rises with red pixels and falls with green ones, so an explanation
  must light up exactly the red disc (docs/explain.md).
- `image.npy`: one image for it, shape (3, 32, 32) (C x H x W, no batch axis): a red disc
  and a smaller green square on grey noise.

It needs numpy and the onnx package: pip install 'modelservice[runtime,examples]'. A model
of your own comes from PyTorch with `modelservice export` (the export extra: torch).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
IMAGE = (3, 32, 32)


def _save(nodes: list, name: str, inputs: list, outputs: list, weights: dict, path: Path) -> Path:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        outputs,
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _io(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp(path: Path) -> Path:
    """input -> Gemm -> ReLU -> Gemm -> ReLU -> Gemm -> output."""
    rng = np.random.default_rng(SEED)
    sizes = [64, 256, 256, 10]
    weights, nodes, x = {}, [], "input"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        weights[f"W{i}"] = rng.normal(0, 1 / np.sqrt(a), (a, b))
        weights[f"b{i}"] = rng.normal(0, 0.1, b)
        last = i == len(sizes) - 2
        y = "output" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [y]))
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"h{i}"]))
            x = f"h{i}"
    inputs, outputs = [_io("input", ["N", 64])], [_io("output", ["N", 10])]
    return _save(nodes, "mlp", inputs, outputs, weights, path)


def cnn(path: Path) -> Path:
    """Two 5x5 filters: redness (r - g - b) and greenness (g - r - b), ReLU, the mean over
    the image, then scores [red - green, green - red] x 20."""
    k = np.zeros((2, 3, 5, 5))
    k[0] = np.array([1.0, -1.0, -1.0])[:, None, None] / 25
    k[1] = np.array([-1.0, 1.0, -1.0])[:, None, None] / 25
    nodes = [
        helper.make_node("Conv", ["input", "K", "kb"], ["c"], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "b"], ["output"]),
    ]
    weights = {
        "K": k,
        "kb": np.zeros(2),
        "W": np.array([[20.0, -20.0], [-20.0, 20.0]]),
        "b": np.zeros(2),
    }
    return _save(
        nodes,
        "red_or_green",
        [_io("input", ["N", *IMAGE])],
        [_io("output", ["N", 2])],
        weights,
        path,
    )


def image() -> np.ndarray:
    rng = np.random.default_rng(SEED)
    _, h, w = IMAGE
    x = np.clip(0.5 + rng.normal(0, 0.05, IMAGE), 0, 1)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 11) ** 2 + (xx - 19) ** 2 <= 6**2
    x[:, disc] = np.array([0.9, 0.1, 0.1])[:, None]
    x[:, 22:28, 4:10] = np.array([0.1, 0.8, 0.1])[:, None, None]
    return x.astype(np.float32)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    mlp(out / "mlp.onnx")
    np.save(out / "mlp-x.npy", rng.random(64).astype(np.float32))
    cnn(out / "cnn.onnx")
    np.save(out / "image.npy", image())
    for name in ("mlp.onnx", "mlp-x.npy", "cnn.onnx", "image.npy"):
        print(out / name)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
