"""The operator's own Prometheus metrics (served on MODELSERVICE_OPERATOR_METRICS_PORT)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "modelservice_operator_reconciles_total",
    "ModelService reconciles, by trigger and result (ok, invalid, error).",
    ["trigger", "result"],
)
ERRORS = Counter(
    "modelservice_operator_reconcile_errors_total",
    "Failed reconciles, by reason (InvalidSpec, ApiError, ...).",
    ["reason"],
)
DURATION = Histogram(
    "modelservice_operator_reconcile_duration_seconds",
    "Time to reconcile one ModelService (render + apply + status).",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DRIFT_REPAIRS = Counter(
    "modelservice_operator_drift_repairs_total",
    "Children re-applied because they were edited or deleted by someone else, by kind.",
    ["kind"],
)

_started: set[int] = set()


@contextmanager
def timed(trigger: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        DURATION.labels(trigger).observe(time.perf_counter() - start)


def serve(port: int) -> None:
    """Start the /metrics HTTP server once per port (0 disables)."""
    if port and port not in _started:
        start_http_server(port)
        _started.add(port)
