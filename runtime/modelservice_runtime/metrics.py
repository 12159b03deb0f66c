"""Prometheus metrics, named exactly as Triton's so existing dashboards and alerts apply.

Triton exposes its counters without the `_total` suffix that prometheus_client forces, so
the counters are plain floats rendered here (they are only touched on the event loop,
which also makes them cheaper than locked client counters). Durations are cumulative
microseconds as in Triton: rate() them. A latency histogram, a batch-size histogram and the
in-flight gauge come from prometheus_client. Each app owns its registry (tests build many).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# `*_created` timestamps double the exposition for no use here (Triton has none).
disable_created_metrics()

LABELS = ("model", "version")
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


@dataclass
class _Counts:
    nv_inference_request_success: float = 0
    nv_inference_request_failure: float = 0
    nv_inference_count: float = 0
    nv_inference_exec_count: float = 0
    nv_inference_request_duration_us: float = 0
    nv_inference_queue_duration_us: float = 0
    nv_inference_compute_infer_duration_us: float = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._models: list[ModelMetrics] = []
        self.inflight = Gauge(
            "nv_inference_pending_request_count",
            "Inference requests in flight (received, not yet answered)",
            LABELS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelservice_batch_size",
            "Rows per model execution",
            LABELS,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelservice_request_duration_seconds",
            "Inference request latency",
            LABELS,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def for_model(self, model: str, version: str) -> ModelMetrics:
        m = ModelMetrics(self, model, version)
        self._models.append(m)
        return m

    def render(self) -> bytes:
        """Prometheus text format 0.0.4: Triton counters, then the client's metrics."""
        lines: list[str] = []
        for f in fields(_Counts):
            lines.append(f"# HELP {f.name} {_COUNTERS[f.name]}")
            lines.append(f"# TYPE {f.name} counter")
            for m in self._models:
                lines.append(f"{f.name}{{{m.label_text}}} {getattr(m.counts, f.name):.17g}")
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)


class ModelMetrics:
    """One model version's metrics, with label children bound once (no lookups per request)."""

    def __init__(self, m: Metrics, model: str, version: str) -> None:
        self.label_text = f'model="{_escape(model)}",version="{_escape(version)}"'
        self.counts = _Counts()
        self.inflight = m.inflight.labels(model, version)
        self._batch_size = m.batch_size.labels(model, version)
        self._latency = m.latency.labels(model, version)

    def on_batch(self, _requests: int, rows: int, _compute_s: float) -> None:
        c = self.counts
        c.nv_inference_exec_count += 1
        c.nv_inference_count += rows
        self._batch_size.observe(rows)

    def on_request(self, ok: bool, total_s: float, queue_s: float, compute_s: float) -> None:
        c = self.counts
        if ok:
            c.nv_inference_request_success += 1
            c.nv_inference_queue_duration_us += queue_s * 1e6
            c.nv_inference_compute_infer_duration_us += compute_s * 1e6
        else:
            c.nv_inference_request_failure += 1
        c.nv_inference_request_duration_us += total_s * 1e6
        self._latency.observe(total_s)
