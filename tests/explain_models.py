"""Small ONNX models built with onnx.helper for the explanation tests: a linear model (the
ground truth of every method is W[target, i] * (x_i - baseline_i)), a small nonlinear one
(checked against the shap package), a linear model over images, a slow one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _io(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def linear(path: Path, w: np.ndarray, b: np.ndarray, batch: int | str = "N") -> Path:
    """y = x @ W.T + b: input `x` [N, F] -> output `y` [N, K], W of shape (K, F); `batch`
    a number: a fixed first axis (no batch axis to stack requests on)."""
    k, f = w.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        "linear",
        [_io("x", [batch, f])],
        [_io("y", [batch, k])],
        [
            numpy_helper.from_array(w.astype(np.float32), "W"),
            numpy_helper.from_array(b.astype(np.float32), "b"),
        ],
    )
    return _save(graph, path)


def tanh_mlp(path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> Path:
    """y = tanh(x @ W1 + b1) @ W2 + b2: input `x` [N, F] -> `y` [N, K]; nonlinear, with
    interactions between features."""
    f, _h = w1.shape
    k = w2.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Gemm", ["t", "W2", "b2"], ["y"]),
        ],
        "tanh_mlp",
        [_io("x", ["N", f])],
        [_io("y", ["N", k])],
        [
            numpy_helper.from_array(w1.astype(np.float32), "W1"),
            numpy_helper.from_array(b1.astype(np.float32), "b1"),
            numpy_helper.from_array(w2.astype(np.float32), "W2"),
            numpy_helper.from_array(b2.astype(np.float32), "b2"),
        ],
    )
    return _save(graph, path)


def image_linear(path: Path, w: np.ndarray, image: tuple[int, int, int]) -> Path:
    """An image `x` [N, C, H, W] flattened, times W.T (K, C*H*W) -> `y` [N, K]."""
    k = w.shape[0]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1])
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["f"]),
            helper.make_node("Gemm", ["f", "W"], ["y"], transB=1),
        ],
        "image_linear",
        [_io("x", ["N", *image])],
        [_io("y", ["N", k])],
        [numpy_helper.from_array(w.astype(np.float32), "W"), shape],
    )
    return _save(graph, path)


def slow(path: Path, features: int = 512, layers: int = 6) -> Path:
    """`x` [N, features] through `layers` square matrix products (weights small, so values
    stay bounded) -> `y` [N, 2]: slow enough per row for an explanation to last seconds."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((features, features)) / np.sqrt(features)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i}"]))
        prev = f"h{i}"
    head = rng.standard_normal((features, 2)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [prev, "head"], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [_io("x", ["N", features])], [_io("y", ["N", 2])], inits
    )
    return _save(graph, path)
