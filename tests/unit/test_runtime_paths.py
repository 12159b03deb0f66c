"""The runtime paths others rely on (modelservice_cli.runtime_paths: the operator's probes
and Prometheus annotation, render.py) are the ones the runtime answers."""

from __future__ import annotations

from pathlib import Path

from modelservice_cli import runtime_paths
from modelservice_operator.render import render_deployment
from modelservice_operator.spec import parse_spec

from tests.unit.test_runtime_server import serving


def test_the_operator_probes_and_scrapes_what_the_runtime_serves(mlp_onnx: Path) -> None:
    deployment = render_deployment("m", "ns", parse_spec({"model": {"uri": "https://h/m"}}), "i")
    template = deployment["spec"]["template"]
    (runtime,) = template["spec"]["containers"]
    probed = {runtime[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
    assert probed == {runtime_paths.HEALTH_READY}
    assert runtime["livenessProbe"]["httpGet"]["path"] == runtime_paths.HEALTH_LIVE
    assert template["metadata"]["annotations"]["prometheus.io/path"] == runtime_paths.METRICS
    with serving(model_path=mlp_onnx) as client:
        assert client.get(runtime_paths.HEALTH_READY).status_code == 200
        assert client.get(runtime_paths.HEALTH_LIVE).status_code == 200
        metrics = client.get(runtime_paths.METRICS)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
