"""Prometheus metrics, named exactly as Triton's so existing dashboards and alerts apply.

Triton exposes its counters without the `_total` suffix, so they are rendered here rather
than by prometheus_client. Durations are cumulative microseconds as in Triton: rate() them.
A latency histogram, a batch-size histogram and the in-flight gauge complete the set.

Every value is a float64 cell in one flat buffer. A single server owns a private buffer;
with `--workers N` the supervisor allocates one shared-memory buffer with a region per
worker, each worker writes only its own region, and whichever worker answers /metrics
sums all regions, so a scrape sees the whole server whichever process it lands on. Cells
are written only from a worker's event loop, so no locks are needed; an aligned float64
store is atomic on the platforms we run on, so a reader never sees a torn value.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelservice_runtime.generation.metrics import GenerationMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Triton counter name -> help
_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests",
    "nv_inference_request_failure": "Number of failed inference requests",
    "nv_inference_count": "Number of inferences performed (batch rows)",
    "nv_inference_exec_count": "Number of model executions (batches run)",
    "nv_inference_request_duration_us": "Cumulative inference request duration (us)",
    "nv_inference_queue_duration_us": "Cumulative time requests waited for a batch (us)",
    "nv_inference_compute_infer_duration_us": "Cumulative model compute time per request (us)",
}
_PENDING = ("nv_inference_pending_request_count", "Inference requests in flight")
# Explanations are counted apart from inference (their model rows are not in
# nv_inference_count): the same shapes under the modelservice_explain_ prefix.
_EXPLAIN_COUNTERS = {
    "modelservice_explain_request_success": "Number of successful explain requests",
    "modelservice_explain_request_failure": "Number of failed explain requests (queue full too)",
    "modelservice_explain_inference_count": "Model rows run for explanations",
    "modelservice_explain_exec_count": "Model executions for explanations",
    "modelservice_explain_request_duration_us": "Cumulative explain request duration (us)",
    "modelservice_explain_queue_duration_us": "Cumulative time explain requests waited (us)",
    "modelservice_explain_compute_duration_us": "Cumulative explanation compute time (us)",
}
_EXPLAIN_PENDING = ("modelservice_explain_pending_request_count", "Explain requests in flight")
_EXPLAIN_LATENCY = ("modelservice_explain_request_duration_seconds", "Explain request latency")
_EXPLAIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH = ("modelservice_batch_size", "Rows per model execution")
_LATENCY = ("modelservice_request_duration_seconds", "Inference request latency")

# Cell layout of one model's block: the counters in _COUNTERS order, the pending gauge,
# then each histogram as one cell per bucket (+Inf last, not cumulative) and its sum.
(SUCCESS, FAILURE, COUNT, EXEC_COUNT, REQUEST_US, QUEUE_US, COMPUTE_US) = range(7)
PENDING = 7
BATCH_AT = 8
LATENCY_AT = BATCH_AT + len(_BATCH_BUCKETS) + 2
EXPLAIN_AT = LATENCY_AT + len(_LATENCY_BUCKETS) + 2  # the explain counters, in order
(X_SUCCESS, X_FAILURE, X_ROWS, X_EXECS, X_REQUEST_US, X_QUEUE_US, X_COMPUTE_US) = range(
    EXPLAIN_AT, EXPLAIN_AT + 7
)
X_PENDING = EXPLAIN_AT + 7
X_LATENCY_AT = X_PENDING + 1
BLOCK = X_LATENCY_AT + len(_EXPLAIN_BUCKETS) + 2
MAX_MODELS = 4  # per server; one is served today, the layout leaves room
# A language model's figures (generation/metrics.py's cells) after the models' blocks.
GENERATION_AT = BLOCK * MAX_MODELS
GENERATION_CELLS = 64
REGION = GENERATION_AT + GENERATION_CELLS  # cells per worker


def shared_cells(workers: int) -> Any:
    """A zeroed shared-memory float64 array for `workers` regions (multiprocessing
    RawArray: pass it to spawned workers as a Process argument)."""
    import multiprocessing

    return multiprocessing.get_context("spawn").RawArray("d", REGION * workers)


def _as_cells(buffer: Any) -> memoryview:
    return memoryview(buffer).cast("B").cast("d")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(model: str, version: str) -> str:
    """The labels of one model's series."""
    return f'model="{_escape(model)}",version="{_escape(version)}"'


def _num(value: float) -> str:
    return f"{value:.17g}"


class Metrics:
    """All metrics of one server: `for_model()` hands out the per-model recorder,
    `render()` the Prometheus text of every worker's values summed."""

    def __init__(self, shared: Any = None, worker: int = 0, workers: int = 1) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker index {worker} is outside 0..{workers - 1}")
        buffer = shared if shared is not None else bytearray(8 * REGION * workers)
        self._cells = _as_cells(buffer)
        if len(self._cells) < REGION * workers:
            raise ValueError(f"metrics buffer of {len(self._cells)} cells < {REGION * workers}")
        self._workers = workers
        self._base = REGION * worker
        self._labels: list[str] = []
        # More metric families, rendered after these (a language model's).
        self.extra: list[Callable[[], str]] = []

    def for_model(self, model: str, version: str) -> ModelMetrics:
        index = len(self._labels)
        if index >= MAX_MODELS:
            raise ValueError(f"at most {MAX_MODELS} models have metrics in one server")
        self._labels.append(labels(model, version))
        offset = self._base + index * BLOCK
        # A restarted worker keeps its region's counters (they stay monotonic) but its
        # predecessor's in-flight requests died with it.
        self._cells[offset + PENDING] = 0.0
        self._cells[offset + X_PENDING] = 0.0
        return ModelMetrics(self._cells, offset)

    def generation(self, model: str, version: str) -> GenerationMetrics:
        """The language model's recorder: this worker's cells, rendered summed over all."""
        from modelservice_runtime.generation.metrics import CELLS, GenerationMetrics

        assert CELLS <= GENERATION_CELLS
        offsets = [w * REGION + GENERATION_AT for w in range(self._workers)]
        recorder = GenerationMetrics(
            labels(model, version), self._cells, self._base + GENERATION_AT, offsets
        )
        self.extra.append(recorder.render)
        return recorder

    def _summed(self, index: int) -> list[float]:
        """Model `index`'s block summed over every worker's region."""
        cells, total = self._cells, [0.0] * BLOCK
        for w in range(self._workers):
            start = w * REGION + index * BLOCK
            for i, value in enumerate(cells[start : start + BLOCK]):
                total[i] += value
        return total

    def render(self) -> bytes:
        """Prometheus text format 0.0.4."""
        blocks = [(labels, self._summed(i)) for i, labels in enumerate(self._labels)]
        lines: list[str] = []
        for cell, (name, help_text) in enumerate(_COUNTERS.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f"{name}{{{labels}}} {_num(b[cell])}" for labels, b in blocks]
        name, help_text = _PENDING
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {_num(b[PENDING])}" for labels, b in blocks]
        for (name, help_text), at, bounds in (
            (_BATCH, BATCH_AT, _BATCH_BUCKETS),
            (_LATENCY, LATENCY_AT, _LATENCY_BUCKETS),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for labels, b in blocks:
                lines += _histogram(name, labels, bounds, b[at : at + len(bounds) + 2])
        for cell, (name, help_text) in enumerate(_EXPLAIN_COUNTERS.items(), EXPLAIN_AT):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f"{name}{{{labels}}} {_num(b[cell])}" for labels, b in blocks]
        name, help_text = _EXPLAIN_PENDING
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {_num(b[X_PENDING])}" for labels, b in blocks]
        name, help_text = _EXPLAIN_LATENCY
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for labels, b in blocks:
            cells = b[X_LATENCY_AT : X_LATENCY_AT + len(_EXPLAIN_BUCKETS) + 2]
            lines += _histogram(name, labels, _EXPLAIN_BUCKETS, cells)
        return ("\n".join(lines) + "\n" + "".join(r() for r in self.extra)).encode()


def _histogram(name: str, labels: str, bounds: Sequence[float], cells: list[float]) -> list[str]:
    buckets, total = cells[:-1], cells[-1]
    out, cumulative = [], 0.0
    for bound, count in zip([*map(float, bounds), "+Inf"], buckets, strict=True):
        cumulative += count
        out.append(f'{name}_bucket{{{labels},le="{bound}"}} {_num(cumulative)}')
    out.append(f"{name}_count{{{labels}}} {_num(cumulative)}")
    out.append(f"{name}_sum{{{labels}}} {_num(total)}")
    return out


class ModelMetrics:
    """One model's recorder: a few cell updates per request, no locks, no lookups."""

    def __init__(self, cells: memoryview, offset: int) -> None:
        self._c = cells
        self._o = offset

    def request_started(self) -> None:
        self._c[self._o + PENDING] += 1

    def pending(self) -> float:
        """Inference requests in flight in this worker (read from any thread: one float)."""
        return self._c[self._o + PENDING]

    def on_request(self, ok: bool, total_s: float, queue_s: float, compute_s: float) -> None:
        """A request started with request_started() has been answered (or failed)."""
        c, o = self._c, self._o
        c[o + PENDING] -= 1
        if ok:
            c[o + SUCCESS] += 1
            c[o + QUEUE_US] += queue_s * 1e6
            c[o + COMPUTE_US] += compute_s * 1e6
        else:
            c[o + FAILURE] += 1
        c[o + REQUEST_US] += total_s * 1e6
        c[o + LATENCY_AT + bisect.bisect_left(_LATENCY_BUCKETS, total_s)] += 1
        c[o + LATENCY_AT + len(_LATENCY_BUCKETS) + 1] += total_s

    def on_batch(self, _requests: int, rows: int, _compute_s: float) -> None:
        c, o = self._c, self._o
        c[o + EXEC_COUNT] += 1
        c[o + COUNT] += rows
        c[o + BATCH_AT + bisect.bisect_left(_BATCH_BUCKETS, rows)] += 1
        c[o + BATCH_AT + len(_BATCH_BUCKETS) + 1] += rows

    def explain_started(self) -> None:
        self._c[self._o + X_PENDING] += 1

    def on_explain(
        self, ok: bool, total_s: float, queue_s: float, compute_s: float, rows: int, runs: int
    ) -> None:
        """An explain request started with explain_started() has been answered (or failed);
        `rows` and `runs`: what it ran through the model."""
        c, o = self._c, self._o
        c[o + X_PENDING] -= 1
        c[o + (X_SUCCESS if ok else X_FAILURE)] += 1
        c[o + X_ROWS] += rows
        c[o + X_EXECS] += runs
        c[o + X_REQUEST_US] += total_s * 1e6
        c[o + X_QUEUE_US] += queue_s * 1e6
        c[o + X_COMPUTE_US] += compute_s * 1e6
        c[o + X_LATENCY_AT + bisect.bisect_left(_EXPLAIN_BUCKETS, total_s)] += 1
        c[o + X_LATENCY_AT + len(_EXPLAIN_BUCKETS) + 1] += total_s
