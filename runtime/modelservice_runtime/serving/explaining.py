"""Explanations in the serving core: parameters against the model, the explain queue, metrics.

The methods are numpy code in modelservice_runtime/explain/; this module runs them for the
endpoints (explain_endpoints.py) in the same onnxruntime session that serves inference, but
never in the inference batcher's queue: explain traffic has its own bounded queue and one
thread of its own per model, so at most one explanation runs at a time (its perturbations
in batched `session.run` calls of explainer.CHUNK_ROWS rows) however many arrive, at most
`--explain-max-queue` more wait (then 503 + Retry-After), and inference keeps its own queue,
batcher and thread; while inference requests are in flight the explanation rests between
its runs (YIELD_TO_INFERENCE). Its metrics are `modelservice_explain_*` (metrics.py), apart from the
inference counters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from modelservice_runtime.errors import BadRequest, NotFound, ServiceUnavailable
from modelservice_runtime.explain.explainer import BatchExplanation, explain_batch
from modelservice_runtime.explain.methods import METHODS
from modelservice_runtime.explain.params import BadParameter, Defaults, parse_parameters
from modelservice_runtime.settings import Settings

if TYPE_CHECKING:
    from modelservice_runtime.serving.entries import ModelEntry
    from modelservice_runtime.serving.metrics import ModelMetrics
    from modelservice_runtime.serving.model import OnnxModel

T = TypeVar("T")
EXTENSION = "explain"
# Explanations of one model computed at once: each already batches its own perturbations,
# so a second would only halve the speed of both and take more cores from inference.
CONCURRENT_EXPLANATIONS = 1
# While inference requests are in flight, the explain thread rests this many times as long
# as its last perturbation run took before the next: an explanation then takes at most
# 1 / (1 + YIELD) of the time (its runs use onnxruntime's whole intra-op pool), the rest is
# left to inference. Without inference it runs flat out.
YIELD_TO_INFERENCE = 1.0


def defaults(settings: Settings) -> Defaults:
    return Defaults(
        method=settings.explain_method,
        samples=min(settings.explain_samples, settings.explain_max_samples),
        max_samples=settings.explain_max_samples,
        patch=settings.explain_patch,
    )


def metadata(settings: Settings) -> dict[str, Any]:
    """What model metadata says of explanations (only when they are on)."""
    d = defaults(settings)
    return {
        "methods": list(METHODS),
        "method": d.method,
        "samples": d.samples,
        "max_samples": d.max_samples,
        "patch": list(d.patch) if d.patch else None,
    }


class ExplainQueue:
    """At most CONCURRENT_EXPLANATIONS running, at most `max_waiting` waiting, the rest 503."""

    def __init__(self, max_waiting: int, executor: ThreadPoolExecutor) -> None:
        self.max_waiting = max_waiting
        self.executor = executor
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made in the running loop

    async def run(self, job: Callable[[], T]) -> tuple[T, float, float]:
        """`job`'s result in the explain thread, its wait and its compute time (s)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(CONCURRENT_EXPLANATIONS)
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise ServiceUnavailable(
                f"the explain queue is full ({self.waiting} explanations waiting, "
                "--explain-max-queue); retry after a moment",
                retry_after=1,
            )
        arrived = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        slots = self._slots
        running = self.executor.submit(job)
        try:
            result = await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            # The caller left (a client gone), but a job that already started runs on in
            # its thread: its slot is free only once it ends, so the queue's bound holds.
            running.add_done_callback(lambda _: loop.call_soon_threadsafe(slots.release))
            raise
        except BaseException:
            slots.release()
            raise
        slots.release()
        return result, started - arrived, time.perf_counter() - started


@dataclass(frozen=True)
class Explained:
    result: BatchExplanation
    baseline: Any  # as the request gave it, echoed in every explanation


def model_runner(model: OnnxModel) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Rows on a new first axis -> every output, rows first: one session.run for a model
    with a batch axis, one per row for a model without."""
    (name,) = model.input_names
    if model.batchable:
        return lambda rows: model.run({name: rows})

    def one_by_one(rows: np.ndarray) -> dict[str, np.ndarray]:
        outs = [model.run({name: np.ascontiguousarray(row)}) for row in rows]
        return {n: np.stack([o[n] for o in outs]) for n in model.output_names}

    return one_by_one


def _yield_to_inference(metrics: ModelMetrics) -> Callable[[float], None]:
    def pace(run_s: float) -> None:  # in the explain thread: sleeping frees the cores
        if metrics.pending() > 0:
            time.sleep(run_s * YIELD_TO_INFERENCE)

    return pace


class ExplainPlane:
    """Explanations of the data plane's models, if the settings turn them on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.explain
        self.defaults = defaults(settings)
        self._queues: dict[str, ExplainQueue] = {}

    def close(self) -> None:
        for queue in self._queues.values():
            queue.executor.shutdown(wait=False, cancel_futures=True)

    def _queue(self, entry: ModelEntry) -> ExplainQueue:
        queue = self._queues.get(entry.name)
        if queue is None:
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"explain-{entry.name}")
            queue = self._queues[entry.name] = ExplainQueue(
                self.settings.explain_max_queue, executor
            )
        return queue

    def check_enabled(self, entry_name: str) -> None:
        if not self.enabled:
            raise NotFound(
                f"explanations are turned off on this server (--no-explain; in a "
                f"ModelService, spec.explainer.enabled: false); model {entry_name!r} still "
                "answers inference requests"
            )

    def instances(self, entry: ModelEntry, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The request's instances, validated against the model: rows of its one input."""
        model = entry.model
        if len(model.inputs) != 1:
            raise BadRequest(
                f"explanations need a model with one input; {entry.name!r} takes "
                f"{model.input_names}"
            )
        spec = model.inputs[0]
        if spec.dtype.kind not in "fiu":
            raise BadRequest(
                f"input {spec.name!r}: explanations perturb numbers; the model takes "
                f"{spec.datatype}"
            )
        arr = model.validate(inputs)[spec.name]
        return arr if model.batchable else arr[None]

    async def explain(
        self, entry: ModelEntry, instances: np.ndarray, raw: Any, ignore: tuple[str, ...] = ()
    ) -> Explained:
        """Validate the parameters, queue, run; metrics on the explain counters."""
        m = entry.metrics
        m.explain_started()
        started = time.perf_counter()
        ok, rows, runs, queue_s, compute_s = False, 0, 0, 0.0, 0.0
        try:
            try:
                request = parse_parameters(
                    raw,
                    defaults=self.defaults,
                    instance_shape=instances.shape[1:],
                    dtype=instances.dtype,
                    outputs=entry.model.output_names,
                    instances=len(instances),
                    ignore=ignore,
                )
            except BadParameter as e:
                raise BadRequest(e.message) from None
            pace = _yield_to_inference(m)
            job = partial(explain_batch, model_runner(entry.model), instances, request, pace=pace)
            try:
                result, queue_s, compute_s = await self._queue(entry).run(job)
            except BadParameter as e:  # a target out of range, seen once the model answered
                raise BadRequest(e.message) from None
            ok, rows, runs = True, result.rows, result.runs
            return Explained(result, request.baseline_echo)
        finally:
            m.on_explain(ok, time.perf_counter() - started, queue_s, compute_s, rows, runs)
