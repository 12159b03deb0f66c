"""The benchmark's models and request bodies.

The models are the test suite's own (tests/modelzoo.py), exported with the project's exporter,
so the benchmark measures exactly what users and tests serve. Every system under test gets
byte-identical request bodies built here, and the expected output computed in-process, so a
server that answers fast but wrong is caught before it is measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Header of the KServe V2 binary tensor data extension: length of the JSON part of the body.
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Body:
    """One request body and the headers that go with it."""

    kind: str  # "json" | "binary"
    data: bytes
    headers: dict[str, str]


@dataclass
class BenchModel:
    """An exported model plus one fixed single-sample input and its in-process output."""

    name: str
    description: str
    path: Path
    sample_shape: tuple[int, ...]
    sample: np.ndarray = field(repr=False)  # shape (1, *sample_shape), float32
    expected: np.ndarray = field(repr=False)  # in-process onnxruntime output for `sample`

    def body(self, kind: str) -> Body:
        """The V2 infer request body for `sample`, as JSON or binary tensor data."""
        shape = list(self.sample.shape)
        if kind == "json":
            doc = {
                "inputs": [
                    {
                        "name": INPUT_NAME,
                        "shape": shape,
                        "datatype": "FP32",
                        "data": [round(float(v), 4) for v in self.sample.ravel()],
                    }
                ]
            }
            return Body("json", json.dumps(doc).encode(), {"Content-Type": "application/json"})
        if kind == "binary":
            raw = self.sample.astype("<f4").tobytes()
            header = {
                "inputs": [
                    {
                        "name": INPUT_NAME,
                        "shape": shape,
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}],
            }
            head = json.dumps(header).encode()
            return Body(
                "binary",
                head + raw,
                {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))},
            )
        raise ValueError(f"body kind: expected 'json' or 'binary', got {kind!r}")


# name -> (tests.modelzoo factory name, per-sample input shape, description)
MODEL_SPECS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "mlp": ("mlp", (64,), "MLP 64->256->256->10 (overhead-bound)"),
    "cnn": ("cnn", (3, 64, 64), "CNN on 3x64x64 images, 3 conv layers (compute-bound)"),
    "cnn_wide": (
        "cnn_wide",
        (3, 64, 64),
        "CNN on 3x64x64 images, 3 conv layers of 1.5x the channels (about 3x the compute; "
        "in-process about as fast as issue 5's reference CNN)",
    ),
    "encoder": (
        "encoder",
        (32, 64),
        "transformer encoder, 32 tokens x 64 features, 2 layers, 4 heads (gains about 2x "
        "from batching in-process)",
    ),
}


def export_models(out_dir: Path, names: list[str]) -> list[BenchModel]:
    """Export the named models with torch (cached by file) and compute their reference outputs."""
    from modelservice_runtime.tools.export import export_module

    from tests import modelzoo

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    models = []
    for name in names:
        factory, sample_shape, description = MODEL_SPECS[name]
        path = out_dir / f"{name}.onnx"
        if not path.exists():
            export_module(getattr(modelzoo, factory)(), (1, *sample_shape), path)
        # Rounded values keep JSON bodies a realistic size; every system gets the same bytes.
        sample = np.round(rng.standard_normal((1, *sample_shape)), 4).astype(np.float32)
        expected = _reference_output(path, sample)
        models.append(BenchModel(name, description, path, sample_shape, sample, expected))
    return models


def zero_compute_twin(model: BenchModel, out_dir: Path) -> BenchModel:
    """A model with `model`'s input and an output of the same size that does almost no
    work: it answers the first values of each sample. Served the same way, its CPU per
    request is the serving cost alone, which is what a compute-bound model's throughput
    loses to next to the in-process limit."""
    import onnx
    from onnx import TensorProto, helper

    width = int(np.prod(model.expected.shape[1:]))
    graph = helper.make_graph(
        [
            # Flatten each sample; then the first `width` values of it are the answer.
            helper.make_node("Flatten", [INPUT_NAME], ["flat"], axis=1),
            helper.make_node(
                "Slice", ["flat", "keep_start", "keep_end", "keep_axes"], [OUTPUT_NAME]
            ),
        ],
        f"{model.name}_zero",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["batch", *model.sample_shape]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", width])],
        initializer=[
            helper.make_tensor("keep_start", TensorProto.INT64, [1], [0]),
            helper.make_tensor("keep_end", TensorProto.INT64, [1], [width]),
            helper.make_tensor("keep_axes", TensorProto.INT64, [1], [1]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    path = out_dir / f"{model.name}_zero.onnx"
    onnx.save(proto, path)
    return BenchModel(
        f"{model.name}_zero",
        f"zero-compute twin of {model.name} (same input, output of the same size, no work)",
        path,
        model.sample_shape,
        model.sample,
        _reference_output(path, model.sample),
    )


def _reference_output(path: Path, sample: np.ndarray) -> np.ndarray:
    """What in-process onnxruntime answers for `sample`: every server's answer must match."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: sample})[0]


def decode_response(body: bytes, headers: dict[str, str]) -> np.ndarray:
    """The first output tensor of a V2 response, JSON or binary tensor data."""
    lowered = {k.lower(): v for k, v in headers.items()}
    json_len = lowered.get(BINARY_HEADER.lower())
    if json_len is not None:
        head = json.loads(body[: int(json_len)])
        out = head["outputs"][0]
        if "data" in out:
            return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        size = out["parameters"]["binary_data_size"]
        raw = body[int(json_len) : int(json_len) + size]
        return np.frombuffer(raw, dtype="<f4").reshape(out["shape"])
    doc = json.loads(body)
    out = doc["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
