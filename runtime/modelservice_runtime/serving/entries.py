"""What the data plane keeps for each served model: an ONNX model with its batcher, or a
language model with its generation engine. Endpoints ask an entry about its model's
inputs and outputs rather than reaching into the model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from modelservice_runtime.serving.batching import DynamicBatcher
from modelservice_runtime.serving.generation import GenaiModel, GenerationEngine, GenerationMetrics
from modelservice_runtime.serving.metrics import ModelMetrics
from modelservice_runtime.serving.model import OnnxModel


@dataclass(eq=False)
class ModelEntry:
    """A served ONNX model."""

    name: str
    version: str
    model: OnnxModel
    metrics: ModelMetrics
    executor: ThreadPoolExecutor
    batcher: DynamicBatcher  # with batching off, one request per run
    max_batch_size: int  # 0: batching is off (as Triton's model config says it)

    def input_specs(self) -> list[tuple[str, np.dtype]]:
        """(name, dtype) of each input, in the model's order."""
        return [(s.name, s.dtype) for s in self.model.inputs]

    def check_outputs(self, names: Sequence[str]) -> None:
        """BadRequest unless every name is one of the model's outputs."""
        self.model.check_outputs(list(names))


@dataclass(eq=False)
class GenerativeEntry:
    """A served language model."""

    name: str
    version: str
    model: GenaiModel
    engine: GenerationEngine
    metrics: GenerationMetrics
    requests: ModelMetrics  # the in-flight gauge and request counters every model has
    created: int
