"""The runtime's HTTP paths that others rely on: the probes the operator puts on its pods,
and the metrics path it announces to Prometheus. One place for both sides: the runtime's
route table serves them (tests/unit/test_runtime_paths.py checks it does), the operator's
render.py points the probes and the scrape annotation at them. Pure standard library, as
this whole package (both images carry it)."""

HEALTH_READY = "/v2/health/ready"
HEALTH_LIVE = "/v2/health/live"
METRICS = "/metrics"
