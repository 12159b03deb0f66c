"""Transport-neutral core: the model registry, readiness, metadata and inference.

The endpoints (endpoints.py, explain_endpoints.py, openai_endpoints.py) parse and
serialize; everything they ask of the model goes through here, and so does the recording of
request metrics (`run_request`), so a second front end (gRPC) reuses both unchanged.
Every inference goes through the model's DynamicBatcher (batching.py): with batching off
it is a batcher of one request per run, two runs at a time, so the queue limit and the
choice between the event loop and a worker thread are the batcher's in both cases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from modelservice_runtime import __version__
from modelservice_runtime.errors import NotFound, ServiceUnavailable
from modelservice_runtime.serving import explaining
from modelservice_runtime.serving.batching import BatchResult, DynamicBatcher
from modelservice_runtime.serving.entries import GenerativeEntry, ModelEntry
from modelservice_runtime.serving.generation import (
    GenaiModel,
    GenerationEngine,
    GenerationMetrics,
    wants_genai,
)
from modelservice_runtime.serving.metrics import Metrics, labels
from modelservice_runtime.serving.model import OnnxModel
from modelservice_runtime.settings import Settings

Request = TypeVar("Request")
Context = TypeVar("Context")
Answer = TypeVar("Answer")

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
# With batching off, requests run one per model run, this many at once (each in a worker
# thread, unless short enough for the loop): a second run overlaps the first's hand-off.
UNBATCHED_CONCURRENCY = 2


def load_model(s: Settings) -> OnnxModel | GenaiModel:
    """Blocking: load the model and, unless disabled, warm it up. A language model (a
    folder with genai_config.json, or --format genai) loads on onnxruntime-genai."""
    if wants_genai(s):
        genai = GenaiModel(s)
        if s.warmup:
            genai.warmup()
        return genai
    model = OnnxModel(s)
    if s.warmup:
        started = time.perf_counter()
        model.warmup(s.max_batch_size)
        log.info("warm-up of %s took %.0f ms", s.name, (time.perf_counter() - started) * 1e3)
    return model


class DataPlane:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._models: dict[str, ModelEntry] = {}
        self.draining = False
        self.load_error: str | None = None
        self.generative: GenerativeEntry | None = None  # a language model, when served
        self.on_close: list[Callable[[], None]] = []  # what else close() stops (explain threads)

    # --- lifecycle ------------------------------------------------------------------------

    def register_generative(self, model: GenaiModel) -> GenerativeEntry:
        """Serve a language model: its engine thread starts here (on the event loop)."""
        s = self.settings
        metrics = GenerationMetrics(labels(s.name, s.model_version))
        self.metrics.extra.append(metrics.render)
        entry = GenerativeEntry(
            s.name,
            s.model_version,
            model,
            GenerationEngine(model, metrics, s.max_queue_size),
            metrics,
            self.metrics.for_model(s.name, s.model_version),
            int(time.time()),
        )
        self.generative = entry
        return entry

    def register(self, model: OnnxModel) -> ModelEntry:
        """Make a loaded model servable (on the event loop). Ready from here on."""
        s = self.settings
        metrics = self.metrics.for_model(s.name, s.model_version)
        batching = s.batching and model.batchable
        if s.batching and not model.batchable:
            log.warning("%s has no open batch axis on every tensor: batching is off", s.name)
        concurrency = 1 if batching else UNBATCHED_CONCURRENCY
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"infer-{s.name}")
        # On the CPU, short batches run on the event loop itself: the hand-off to a thread
        # adds a wake-up and GIL contention and buys no overlap, because parsing the next
        # requests needs the same cores (measured on the MLP, 1 worker: about +50% req/s).
        # A GPU computes while the loop parses, so there every batch goes to the thread.
        on_cpu = model.providers[0] == "CPUExecutionProvider"
        inline_below_s = INLINE_BATCH_BELOW_S if batching else INLINE_UNBATCHED_BELOW_S
        batcher = DynamicBatcher(
            model.run,
            max_batch_size=s.max_batch_size if batching else 1,
            max_delay_s=s.max_batch_delay_us / 1e6 if batching else 0.0,
            max_queue_size=s.max_queue_size,
            executor=executor,
            max_concurrent_batches=concurrency,
            inline_below_s=inline_below_s if on_cpu else 0.0,
            on_batch=metrics.on_batch,
        )
        entry = ModelEntry(
            s.name,
            s.model_version,
            model,
            metrics,
            executor,
            batcher,
            s.max_batch_size if batching else 0,
        )
        self._models[s.name] = entry
        return entry

    async def close(self) -> None:
        if self.generative is not None:
            self.generative.engine.close()
        for entry in self._models.values():
            await entry.batcher.stop()
            entry.executor.shutdown(wait=False, cancel_futures=True)
        for stop in self.on_close:
            stop()

    # --- health and metadata --------------------------------------------------------------

    def ready(self) -> bool:
        return (bool(self._models) or self.generative is not None) and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        extensions = [*EXTENSIONS, *([explaining.EXTENSION] if self.settings.explain else [])]
        return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}

    def names(self) -> list[str]:
        return list(self._models) + ([self.generative.name] if self.generative else [])

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None and self.generative is not None and name == self.generative.name:
            raise NotFound(
                f"model {name!r} is a language model: use the OpenAI routes "
                "(/v1/completions, /v1/chat/completions)"
            )
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
        meta: dict[str, Any] = {
            "name": entry.name,
            "versions": [entry.version],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in entry.model.inputs],
            "outputs": [s.metadata() for s in entry.model.outputs],
        }
        if self.settings.explain:  # the explain extension and its defaults
            meta["extensions"] = [explaining.EXTENSION]
            meta["explain"] = explaining.metadata(self.settings)
        return meta

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
        """Validate and run, batched when the model and settings allow it."""
        feeds = entry.model.validate(inputs)
        # A model without an open batch axis takes each request as one row.
        rows = next(iter(feeds.values())).shape[0] if feeds and entry.model.batchable else 1
        return await entry.batcher.submit(feeds, rows)

    async def run_request(
        self,
        entry: ModelEntry,
        parse: Callable[[Request], tuple[dict[str, np.ndarray], Context]],
        build: Callable[[dict[str, np.ndarray], Context], Answer],
        request: Request,
    ) -> Answer:
        """One inference request of any front end: parse, infer, build, timed and counted
        in the model's request metrics (a refusal counts as a failed request)."""
        started = time.perf_counter()
        m = entry.metrics
        m.request_started()
        try:
            inputs, context = parse(request)
            result = await self.infer(entry, inputs)
            answer = build(result.outputs, context)
        except BaseException:
            m.on_request(False, time.perf_counter() - started, 0.0, 0.0)
            raise
        m.on_request(True, time.perf_counter() - started, result.queue_s, result.compute_s)
        return answer
