"""One ONNX model behind an onnxruntime session: providers, session options, metadata,
input validation, optional normalization, warm-up.

Validation happens here (not in the protocol code) because only the model knows which
names, datatypes and shapes it takes; every message names the input and what was expected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from modelservice_runtime import model_files
from modelservice_runtime.errors import BadRequest, InferenceFailed
from modelservice_runtime.ort_compat import invalid_argument
from modelservice_runtime.providers import CPU, CUDA, TENSORRT
from modelservice_runtime.serving.datatypes import ONNX_TO_V2, V2_TO_NUMPY, v2_datatype
from modelservice_runtime.serving.external_data import (
    ExternalDataError,
    NotOnnx,
    check_external_data,
)
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.model")


class ModelLoadError(RuntimeError):
    """The model cannot be served (missing file, not ONNX, provider unavailable, ...)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # V2 datatype
    shape: tuple[int, ...]  # -1 where the model leaves the dimension open
    dtype: np.dtype

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(node: Any) -> TensorSpec:
    datatype = ONNX_TO_V2.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {node.name!r} has type {node.type}, which V2 cannot carry")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, shape, V2_TO_NUMPY[datatype])


def select_providers(
    choice: str, available: list[str], gpu_mem_limit: int = 0
) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers in preference order for --execution-provider `choice`.

    auto picks CUDA when this onnxruntime build has it, else CPU. TensorRT is opt-in: it
    compiles engines at startup (minutes) and needs the TensorRT libraries in the image.
    """
    cuda: str | tuple[str, dict[str, Any]] = (
        (CUDA, {"gpu_mem_limit": str(gpu_mem_limit)}) if gpu_mem_limit else CUDA
    )
    if choice == "cpu":
        return [CPU]
    if choice == "auto":
        return [cuda, CPU] if CUDA in available else [CPU]
    wanted = {"cuda": CUDA, "tensorrt": TENSORRT}[choice]
    if wanted not in available:
        raise ModelLoadError(
            f"--execution-provider {choice}: this onnxruntime offers only {available}; "
            "install onnxruntime-gpu (pip install 'modelservice[gpu]') on a GPU node"
        )
    return [TENSORRT, cuda, CPU] if choice == "tensorrt" else [cuda, CPU]


def prepack_weights(choice: str, has_external_data: bool) -> bool:
    """--prepack-weights: auto prepacks only a model without external data. A model that
    needed external data is large, and prepacking would give every worker its own copy."""
    if choice == "auto":
        return not has_external_data
    return choice == "on"


class OnnxModel:
    """A loaded, validated, optionally warmed-up ONNX model. Thread-safe `run`."""

    def __init__(self, settings: Settings) -> None:
        import onnxruntime as ort

        self._invalid_argument = invalid_argument()
        try:
            # A directory (a model with external data files) names its model file.
            path = model_files.locate(Path(settings.model_path))
        except model_files.ModelFileError as e:
            raise ModelLoadError(f"model {e}") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.intra_op_threads
        opts.inter_op_num_threads = settings.inter_op_threads
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[settings.graph_optimization_level]
        opts.enable_cpu_mem_arena = settings.cpu_arena
        # Idle intra-op threads spinning for work steal the cores the event loop needs to
        # parse and answer requests; with batching, work arrives in batches anyway.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = select_providers(
            settings.execution_provider, ort.get_available_providers(), settings.gpu_mem_limit
        )
        try:
            # Before onnxruntime opens anything: it would read any file a reference names.
            external = check_external_data(path)
        except NotOnnx as e:
            raise ModelLoadError(f"cannot load {path} as an ONNX model: {e}") from e
        except ExternalDataError as e:
            raise ModelLoadError(str(e)) from e
        self.prepacked = prepack_weights(settings.prepack_weights, bool(external))
        if not self.prepacked:
            # onnxruntime then maps external data read-only from the file instead of packing
            # a private copy: N workers share one copy of the weights (docs/runtime.md).
            opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            # By path, never by bytes: external data resolves against the model's directory
            # and this process never holds a copy of the weights (docs/runtime.md, memory).
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises several unrelated types here
            raise ModelLoadError(f"cannot load {path} as an ONNX model: {e}") from e
        self.providers: list[str] = self.session.get_providers()
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if settings.execution_provider != "auto" and first not in self.providers:
            raise ModelLoadError(
                f"--execution-provider {settings.execution_provider}: onnxruntime fell back "
                f"to {self.providers} (missing CUDA/TensorRT libraries?)"
            )
        self.inputs = [_spec(n) for n in self.session.get_inputs()]
        self.outputs = [_spec(n) for n in self.session.get_outputs()]
        self.input_names = [s.name for s in self.inputs]
        self.output_names = [s.name for s in self.outputs]
        self._input_by_name = {s.name: s for s in self.inputs}
        # Batchable: every tensor has an open first axis, so requests can be stacked on it.
        self.batchable = all(
            len(s.shape) >= 1 and s.shape[0] == -1 for s in self.inputs + self.outputs
        )
        self._normalize = self._normalizer(settings)
        log.info(
            "loaded %s: providers=%s inputs=%s outputs=%s batchable=%s external_data=%d "
            "prepacked=%s",
            path,
            self.providers,
            [s.metadata() for s in self.inputs],
            [s.metadata() for s in self.outputs],
            self.batchable,
            len(external),
            self.prepacked,
        )

    def _normalizer(self, settings: Settings) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(input, mean, 1/std) broadcastable over axis 1 (channels) of the first float input."""
        if settings.normalize_mean is None or settings.normalize_std is None:
            return None
        target = next((s for s in self.inputs if s.dtype.kind == "f"), None)
        if target is None or len(target.shape) < 2:
            raise ModelLoadError(
                "--normalize-mean/--normalize-std need a float input of rank >= 2 "
                f"(channels on axis 1); the model has {[s.metadata() for s in self.inputs]}"
            )
        channels = len(settings.normalize_mean)
        if target.shape[1] not in (-1, channels):
            raise ModelLoadError(
                f"--normalize-mean has {channels} values but input {target.name!r} has "
                f"{target.shape[1]} channels on axis 1"
            )
        bshape = (1, channels) + (1,) * (len(target.shape) - 2)
        mean = np.asarray(settings.normalize_mean, dtype=target.dtype).reshape(bshape)
        inv_std = (
            (1.0 / np.asarray(settings.normalize_std, dtype=np.float64))
            .astype(target.dtype)
            .reshape(bshape)
        )
        return target.name, mean, inv_std

    # --- requests -------------------------------------------------------------------------

    def validate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names, datatypes and shapes against the model; return feeds in model order."""
        if len(inputs) != len(self.inputs) or any(n not in self._input_by_name for n in inputs):
            unknown = [n for n in inputs if n not in self._input_by_name]
            if unknown:
                raise BadRequest(
                    f"unknown input {unknown[0]!r}; the model takes inputs {self.input_names}"
                )
            missing = [n for n in self.input_names if n not in inputs]
            raise BadRequest(f"missing input(s) {missing}; the model takes {self.input_names}")
        feeds: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in self.inputs:
            arr = inputs[spec.name]
            if arr.dtype != spec.dtype and not (spec.dtype.kind == "O" and arr.dtype.kind in "OUS"):
                raise BadRequest(
                    f"input {spec.name!r}: datatype {v2_datatype(arr.dtype)} does not match; "
                    f"the model expects {spec.datatype}"
                )
            shape = arr.shape
            if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
            ):
                raise BadRequest(
                    f"input {spec.name!r}: shape {list(shape)} does not match the model's "
                    f"{list(spec.shape)} (-1 = any size)"
                )
            if self.batchable:
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise BadRequest(
                        f"input {spec.name!r}: batch size {shape[0]} differs from the other "
                        f"inputs' {rows}; expected the same first dimension for all inputs"
                    )
            if self._normalize and spec.name == self._normalize[0]:
                mean = self._normalize[1]
                if shape[1] != mean.shape[1]:
                    raise BadRequest(
                        f"input {spec.name!r}: {shape[1]} channels on axis 1, but normalization "
                        f"is configured for {mean.shape[1]}"
                    )
            feeds[spec.name] = arr
        return feeds

    def check_outputs(self, names: list[str]) -> None:
        for name in names:
            if name not in self.output_names:
                raise BadRequest(
                    f"unknown output {name!r}; the model has outputs {self.output_names}"
                )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated feeds (blocking; call from a worker thread). All outputs."""
        if self._normalize is not None:
            name, mean, inv_std = self._normalize
            x = np.subtract(feeds[name], mean)  # new array: binary inputs are read-only views
            np.multiply(x, inv_std, out=x)
            feeds = {**feeds, name: x}
        try:
            results = self.session.run(self.output_names, feeds)
        except self._invalid_argument as e:
            raise BadRequest(f"the model rejected the input: {e}") from e
        except UnicodeDecodeError as e:  # onnxruntime hands tensor(string) out as str only
            raise InferenceFailed(
                "inference failed: the model produced a tensor(string) element that is not "
                f"UTF-8, which onnxruntime cannot hand out ({e})"
            ) from e
        except Exception as e:
            raise InferenceFailed(f"inference failed: {e}") from e
        return dict(zip(self.output_names, results, strict=True))

    def example_inputs(self, batch_size: int = 1) -> dict[str, np.ndarray]:
        """Zeros of a valid shape (open dimensions: batch_size on axis 0, else 1)."""
        feeds = {}
        for spec in self.inputs:
            shape = tuple(
                (batch_size if i == 0 else 1) if d == -1 else d for i, d in enumerate(spec.shape)
            )
            if spec.dtype.kind == "O":
                feeds[spec.name] = np.full(shape, "", dtype=np.object_)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds

    def warmup(self, max_batch_size: int) -> None:
        """Run once at batch 1 (and at the largest batch) so the first request is not slow."""
        sizes = [1]
        if self.batchable and max_batch_size > 1:
            sizes.append(max_batch_size)
        for size in sizes:
            try:
                self.run(self.example_inputs(size))
            except Exception as e:
                raise ModelLoadError(f"warm-up at batch {size} failed: {e}") from e
