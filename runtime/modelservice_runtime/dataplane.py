"""Transport-neutral core: the model registry, readiness, metadata and inference.

HTTP endpoints (server.py) parse and serialize; everything they ask of the model goes
through here, so a gRPC front end could reuse it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelservice_runtime import __version__
from modelservice_runtime.batching import BatchResult, DynamicBatcher, RowTime
from modelservice_runtime.errors import NotFound, ServiceUnavailable
from modelservice_runtime.metrics import Metrics, ModelMetrics
from modelservice_runtime.model import OnnxModel
from modelservice_runtime.settings import Settings

log = logging.getLogger("modelservice.dataplane")

SERVER_NAME = "modelservice"
# Only what is implemented: there is no model-repository API (one model per server).
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
# Longest expected batch run on the event loop (CPU only): holding up probes and new
# requests this long is harmless.
INLINE_BATCH_BELOW_S = 0.01
# The same with batching off, kept short: what runs on the loop never waits in the
# counted queue (--max-queue-size), so only requests far cheaper than a hand-off to a
# thread go there.
INLINE_UNBATCHED_BELOW_S = 0.001


def load_model(s: Settings) -> OnnxModel:
    """Blocking: load the model and, unless disabled, warm it up."""
    model = OnnxModel(s)
    if s.warmup:
        started = time.perf_counter()
        model.warmup(s.max_batch_size)
        log.info("warm-up of %s took %.0f ms", s.name, (time.perf_counter() - started) * 1e3)
    return model


@dataclass(eq=False)
class ModelEntry:
    name: str
    version: str
    model: OnnxModel
    metrics: ModelMetrics
    executor: ThreadPoolExecutor
    batcher: DynamicBatcher | None
    max_batch_size: int
    inline_below_s: float = 0.0  # unbatched requests expected to run faster run on the loop
    row_time: RowTime = field(default_factory=RowTime)  # unbatched runs
    inflight: int = 0  # unbatched requests waiting for or in a worker


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, ModelEntry] = {}
        self.draining = False
        self.load_error: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def register(self, model: OnnxModel) -> ModelEntry:
        """Make a loaded model servable (on the event loop). Ready from here on."""
        s = self.settings
        metrics = self.metrics.for_model(s.name, s.model_version)
        batching = s.batching and model.batchable
        if s.batching and not model.batchable:
            log.warning("%s has no open batch axis on every tensor: batching is off", s.name)
        executor = ThreadPoolExecutor(
            max_workers=1 if batching else 2, thread_name_prefix=f"infer-{s.name}"
        )
        # On the CPU, short batches run on the event loop itself: the hand-off to a thread
        # adds a wake-up and GIL contention and buys no overlap, because parsing the next
        # requests needs the same cores (measured on the MLP, 1 worker: about +50% req/s).
        # A GPU computes while the loop parses, so there every batch goes to the thread.
        on_cpu = model.providers[0] == "CPUExecutionProvider"
        batcher = (
            DynamicBatcher(
                model.run,
                max_batch_size=s.max_batch_size,
                max_delay_s=s.max_batch_delay_us / 1e6,
                max_queue_size=s.max_queue_size,
                executor=executor,
                inline_below_s=INLINE_BATCH_BELOW_S if on_cpu else 0.0,
                on_batch=metrics.on_batch,
            )
            if batching
            else None
        )
        entry = ModelEntry(
            s.name,
            s.model_version,
            model,
            metrics,
            executor,
            batcher,
            s.max_batch_size if batching else 0,
            inline_below_s=INLINE_UNBATCHED_BELOW_S if on_cpu else 0.0,
        )
        self._models[s.name] = entry
        return entry

    async def close(self) -> None:
        for entry in self._models.values():
            if entry.batcher is not None:
                await entry.batcher.stop()
            entry.executor.shutdown(wait=False, cancel_futures=True)

    # --- health and metadata --------------------------------------------------------------

    @staticmethod
    def live() -> bool:
        return True

    def ready(self) -> bool:
        return bool(self._models) and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            if self.load_error is None and not self._models and name == self.settings.name:
                raise ServiceUnavailable(f"model {name!r} is still loading", retry_after=1)
            raise NotFound(f"model {name!r} not found; this server serves {self.names()}")
        if version is not None and version != entry.version:
            raise NotFound(
                f"model {name!r} has no version {version!r}; available versions: "
                f"[{entry.version!r}]"
            )
        return entry

    def default(self) -> ModelEntry:
        return self.get(self.settings.name)

    def model_metadata(self, entry: ModelEntry) -> dict[str, Any]:
        return {
            "name": entry.name,
            "versions": [entry.version],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in entry.model.inputs],
            "outputs": [s.metadata() for s in entry.model.outputs],
        }

    def model_config(self, entry: ModelEntry) -> dict[str, Any]:
        """Triton-style config, enough for tritonclient's get_model_config and perf tools."""
        batch = entry.max_batch_size

        def dims(shape: tuple[int, ...]) -> list[int]:
            return list(shape[1:] if batch else shape)

        return {
            "name": entry.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": batch,
            "input": [
                {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": dims(s.shape)}
                for s in entry.model.inputs
            ],
            "output": [
                {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": dims(s.shape)}
                for s in entry.model.outputs
            ],
            "dynamic_batching": (
                {"max_queue_delay_microseconds": self.settings.max_batch_delay_us}
                if batch
                else None
            ),
        }

    # --- inference -------------------------------------------------------------------------

    async def infer(self, entry: ModelEntry, inputs: dict[str, np.ndarray]) -> BatchResult:
        """Validate and run; batched when the model and settings allow it."""
        feeds = entry.model.validate(inputs)
        if entry.batcher is not None:
            return await entry.batcher.submit(feeds)
        rows = next(iter(feeds.values())).shape[0] if feeds and entry.model.batchable else 1
        if entry.row_time.expected_below(rows, entry.inline_below_s):
            # Shorter than the hand-off to a thread and back (see INLINE_BATCH_BELOW_S).
            outputs, compute_s = _timed(entry, feeds)
        else:
            outputs, compute_s = await self._in_worker(entry, feeds)
        entry.row_time.record(rows, compute_s)
        entry.metrics.on_batch(1, rows, compute_s)
        return BatchResult(outputs, 0.0, compute_s, rows)

    async def _in_worker(
        self, entry: ModelEntry, feeds: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        if entry.inflight >= self.settings.max_queue_size:
            raise ServiceUnavailable(
                f"the request queue is full ({self.settings.max_queue_size} requests "
                "waiting); retry after a moment",
                retry_after=1,
            )
        entry.inflight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(entry.executor, _timed, entry, feeds)
        finally:
            entry.inflight -= 1


def _timed(entry: ModelEntry, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    started = time.perf_counter()
    outputs = entry.model.run(feeds)
    return outputs, time.perf_counter() - started
