"""Multi-process serving without processes: shared metrics, worker counts, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from modelservice_runtime.cpus import available_cpus
from modelservice_runtime.process.workers import worker_count
from modelservice_runtime.serving import metrics as metrics_mod
from modelservice_runtime.serving.metrics import Metrics, shared_cells
from modelservice_runtime.settings import Settings, SettingsError, from_args
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, le or '') -> value, parsed by prometheus_client's own parser (which
    adds `_total` to counters; Triton's names have none)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name.removesuffix("_total"), s.labels.get("le", ""))] = s.value
    return out


def test_every_worker_renders_the_sum_of_all_workers() -> None:
    cells = shared_cells(2)
    a = Metrics(cells, worker=0, workers=2)
    b = Metrics(cells, worker=1, workers=2)
    ma, mb = a.for_model("mlp", "1"), b.for_model("mlp", "1")
    for m, rows, seconds in ((ma, 4, 0.002), (mb, 1, 0.2), (mb, 2, 0.0004)):
        m.request_started()
        m.on_batch(1, rows, 0.001)
        m.on_request(True, seconds, 0.0001, 0.001)
    ma.request_started()
    ma.on_request(False, 0.01, 0.0, 0.0)
    mb.request_started()  # still in flight

    text_a, text_b = a.render().decode(), b.render().decode()
    assert text_a == text_b
    got = samples(text_a)
    assert got[("nv_inference_request_success", "")] == 3
    assert got[("nv_inference_request_failure", "")] == 1
    assert got[("nv_inference_count", "")] == 7
    assert got[("nv_inference_exec_count", "")] == 3
    assert got[("nv_inference_pending_request_count", "")] == 1
    assert got[("nv_inference_request_duration_us", "")] == pytest.approx(212_400)
    # Histograms are cumulative, `le` inclusive, +Inf = count.
    assert got[("modelservice_batch_size_bucket", "1.0")] == 1
    assert got[("modelservice_batch_size_bucket", "2.0")] == 2
    assert got[("modelservice_batch_size_bucket", "4.0")] == 3
    assert got[("modelservice_batch_size_bucket", "+Inf")] == 3
    assert got[("modelservice_batch_size_sum", "")] == 7
    assert got[("modelservice_request_duration_seconds_bucket", "0.0005")] == 1
    assert got[("modelservice_request_duration_seconds_bucket", "0.0025")] == 2
    assert got[("modelservice_request_duration_seconds_bucket", "0.25")] == 4
    assert got[("modelservice_request_duration_seconds_count", "")] == 4


def test_a_restarted_worker_keeps_its_counters_but_not_its_in_flight_requests() -> None:
    cells = shared_cells(2)
    m = Metrics(cells, worker=1, workers=2).for_model("m", "1")
    m.request_started()
    m.request_started()
    m.on_request(True, 0.001, 0.0, 0.0)
    again = Metrics(cells, worker=1, workers=2)  # the replacement process
    again.for_model("m", "1")
    got = samples(again.render().decode())
    assert got[("nv_inference_request_success", "")] == 1
    assert got[("nv_inference_pending_request_count", "")] == 0


def test_label_values_are_escaped_and_models_are_bounded() -> None:
    m = Metrics()
    m.for_model('we"ird\\name', "1")
    assert 'model="we\\"ird\\\\name"' in m.render().decode()
    for i in range(metrics_mod.MAX_MODELS - 1):
        m.for_model(f"m{i}", "1")
    with pytest.raises(ValueError, match="at most"):
        m.for_model("one-too-many", "1")


def test_metrics_refuse_a_worker_index_outside_the_buffer() -> None:
    with pytest.raises(ValueError, match="worker index 2"):
        Metrics(shared_cells(2), worker=2, workers=2)


@pytest.mark.parametrize(
    ("cpu_max", "cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None)],
)
def test_available_cpus_honours_a_cgroup_cpu_limit(
    tmp_path: Path, cpu_max: str, cap: int | None
) -> None:
    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(f) == (affinity if cap is None else min(affinity, cap))
    assert available_cpus(tmp_path / "missing") == affinity


def test_worker_count_resolves_zero_to_cpus_but_one_on_a_gpu(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    assert worker_count(Settings(model_path=model, workers=3)) == 3
    assert worker_count(Settings(model_path=model)) == 1
    assert worker_count(Settings(model_path=model, workers=0, execution_provider="cuda")) == 1
    assert worker_count(Settings(model_path=model, workers=0, execution_provider="cpu")) == (
        available_cpus()
    )


def test_workers_flag_and_env() -> None:
    import argparse

    from modelservice_runtime.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["m.onnx"])
    assert from_args(args, {"MODELSERVICE_WORKERS": "2"}).workers == 2
    assert from_args(parser.parse_args(["m.onnx", "--workers", "0"]), {}).workers == 0
    with pytest.raises(SettingsError, match="--workers must be >= 0"):
        from_args(parser.parse_args(["m.onnx", "--workers", "-1"]), {})
    with pytest.raises(SettingsError, match="MODELSERVICE_WORKERS: "):
        from_args(args, {"MODELSERVICE_WORKERS": "two"})


def test_worker_timeout_flag_and_env() -> None:
    import argparse

    from modelservice_runtime.settings import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["m.onnx"])
    assert from_args(args, {}).worker_timeout_s == 30.0
    assert from_args(args, {"MODELSERVICE_WORKER_TIMEOUT_S": "5"}).worker_timeout_s == 5.0
    with pytest.raises(SettingsError, match="--worker-timeout-s must be > 0"):
        from_args(parser.parse_args(["m.onnx", "--worker-timeout-s", "0"]), {})
