"""The limit: in-process onnxruntime `session.run` throughput, no HTTP at all.

Measured with the same session options a user gets by default (all graph optimizations,
onnxruntime's default thread pools), at batch 1 and over a sweep of batch sizes; the best
samples/s of the sweep is the ceiling any server on this machine can approach by batching.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from bench.models import INPUT_NAME, BenchModel

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class LimitResult:
    model: str
    batch1_runs_per_s: float
    batch1_p50_us: float
    best_batch: int
    best_samples_per_s: float
    sweep: dict[int, float]  # batch size -> samples/s

    def to_dict(self) -> dict:
        return asdict(self)


def _rate(session, feed: dict, seconds: float) -> tuple[float, list[float]]:
    """Runs/s of session.run(feed) over about `seconds`, and each run's latency in seconds."""
    session.run(None, feed)  # first run allocates; not measured
    times: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        t0 = time.perf_counter()
        session.run(None, feed)
        now = time.perf_counter()
        times.append(now - t0)
    return len(times) / (now - start), times


def measure_limit(model: BenchModel, seconds: float) -> LimitResult:
    """In-process throughput at batch 1 and at each batch size of the sweep."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    runs, times = _rate(session, {INPUT_NAME: model.sample}, seconds)
    sweep: dict[int, float] = {1: runs}
    for batch in BATCH_SIZES[1:]:
        x = np.repeat(model.sample, batch, axis=0)
        rate, _ = _rate(session, {INPUT_NAME: x}, seconds / 2)
        sweep[batch] = rate * batch
    best = max(sweep, key=lambda b: sweep[b])
    return LimitResult(
        model=model.name,
        batch1_runs_per_s=runs,
        batch1_p50_us=float(np.median(times) * 1e6),
        best_batch=best,
        best_samples_per_s=sweep[best],
        sweep=sweep,
    )
