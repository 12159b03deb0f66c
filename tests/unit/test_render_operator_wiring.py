"""Operator wiring without a cluster: kopf arguments, settings, drift comparison."""

from __future__ import annotations

import pytest
from modelservice_operator.cli import kopf_args
from modelservice_operator.drift import contains
from modelservice_operator.settings import DEFAULT_RUNTIME_IMAGE, OperatorSettings


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env({})
    assert s.runtime_image == DEFAULT_RUNTIME_IMAGE and s.namespaces == ()
    s = OperatorSettings.from_env({
        "MODELSERVICE_RUNTIME_IMAGE": "rt:1", "MODELSERVICE_NAMESPACES": "a, b,,",
        "MODELSERVICE_OPERATOR_PROBE_PORT": "0", "MODELSERVICE_OPERATOR_METRICS_PORT": "9999",
    })  # fmt: skip
    assert (s.runtime_image, s.namespaces, s.probe_port, s.metrics_port) == (
        "rt:1",
        ("a", "b"),
        0,
        9999,
    )
    with pytest.raises(ValueError, match="MODELSERVICE_OPERATOR_PROBE_PORT: expected an integer"):
        OperatorSettings.from_env({"MODELSERVICE_OPERATOR_PROBE_PORT": "http"})


def test_max_concurrent_defaults_to_a_bound_and_refuses_negatives() -> None:
    assert OperatorSettings.from_env({}).max_concurrent == 100
    env = {"MODELSERVICE_OPERATOR_MAX_CONCURRENT": "0"}
    assert OperatorSettings.from_env(env).max_concurrent == 0
    with pytest.raises(ValueError, match="MODELSERVICE_OPERATOR_MAX_CONCURRENT: expected 0"):
        OperatorSettings.from_env({"MODELSERVICE_OPERATOR_MAX_CONCURRENT": "-1"})


def test_kopf_args_defaults_to_all_namespaces_liveness_and_standalone() -> None:
    args = kopf_args([], OperatorSettings.from_env({}))
    assert args == [
        "run",
        "-m",
        "modelservice_operator.handlers",
        "--all-namespaces",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--standalone",
    ]


def test_kopf_args_from_settings_and_user_flags_win() -> None:
    settings = OperatorSettings.from_env({"MODELSERVICE_NAMESPACES": "ml,ml-*"})
    args = kopf_args(["--verbose"], settings)
    assert args[3:7] == ["--namespace", "ml", "--namespace", "ml-*"]
    assert args[-1] == "--verbose"
    args = kopf_args(["run", "-n", "x", "--liveness=http://127.0.0.1:1/h", "--peering=p"], settings)
    assert args == [
        "run",
        "-m",
        "modelservice_operator.handlers",
        "-n",
        "x",
        "--liveness=http://127.0.0.1:1/h",
        "--peering=p",
    ]


def test_contains_ignores_api_defaults_but_sees_edits() -> None:
    want = {
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [{"name": "runtime", "resources": {"requests": {"cpu": "1"}}}]
                }
            },
        }
    }
    live = {
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {
                    "dnsPolicy": "ClusterFirst",
                    "containers": [
                        {
                            "name": "runtime",
                            "terminationMessagePath": "/dev/termination-log",
                            "resources": {"requests": {"cpu": 1}},
                        }
                    ],
                }
            },
        }
    }
    assert contains(live, want)
    live["spec"]["replicas"] = 5
    assert not contains(live, want)
    live["spec"]["replicas"] = 2
    # A container another manager added (a sidecar) is not drift: server-side apply keeps
    # it whatever we apply, so "repairing" it would re-apply on every event.
    live["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert contains(live, want)
    # Our own container gone, or edited, still is.
    live["spec"]["template"]["spec"]["containers"][0]["name"] = "renamed"
    assert not contains(live, want)
    live["spec"]["template"]["spec"]["containers"][0]["name"] = "runtime"
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = 2
    assert not contains(live, want)


def test_quiet_successes_drops_only_the_named_handlers_successes() -> None:
    import logging

    from modelservice_operator.handlers import QuietSuccesses

    quiet = QuietSuccesses(["deployment_event"])

    def passes(msg: str, level: int = logging.INFO) -> bool:
        return quiet.filter(logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None))

    assert not passes("Handler 'deployment_event' succeeded.")
    assert passes("Handler 'reconcile_modelservice' succeeded.")
    assert passes("Handler 'deployment_event' failed with an exception. Will retry.", logging.ERROR)
    assert passes("applied Deployment, Service (spec hash abc)")


def test_importing_the_handlers_reads_no_settings() -> None:
    """Settings are read at kopf startup (handlers.configure, into kopf's memo), not at
    import: a bad value fails the operator's start, not an import of the module."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MODELSERVICE_OPERATOR_MAX_CONCURRENT": "-1"}
    code = "import modelservice_operator.handlers as h; assert not hasattr(h, 'SETTINGS')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
