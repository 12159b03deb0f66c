"""ModelService spec models: defaults, examples, and every refused input naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from modelservice_operator.spec import (
    OPERATOR_ENV_NAMES,
    InvalidSpec,
    ModelServiceSpec,
    parse_spec,
)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
URI = "https://models.example.com/m.onnx"


def _errors(spec: dict, name: str = "m") -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec, name)
    return info.value.errors


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = parse_spec({"model": {"uri": URI}}, "m")
    assert spec.runtime.image is None
    assert spec.runtime.batching.max_batch_size == 32
    assert spec.runtime.batching.max_delay_microseconds == 500
    assert (spec.runtime.threads.intra_op, spec.runtime.threads.inter_op) == (0, 0)
    assert spec.resources.requests == {"cpu": "500m", "memory": "1Gi"}
    assert spec.resources.limits == {}
    assert spec.gpu is None and spec.autoscaling is None
    assert spec.replicas is None and spec.fixed_replicas == 1
    assert spec.node_selector == {} and spec.tolerations == [] and spec.affinity == {}


def test_camel_case_aliases_round_trip() -> None:
    raw = {
        "model": {"uri": URI, "secretRef": {"name": "creds"}},
        "gpu": {"resourceName": "nvidia.com/mig-1g.5gb"},
        "autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 50},
        "nodeSelector": {"pool": "inference"},
    }
    spec = parse_spec(raw, "m")
    assert spec.model.secret_ref is not None and spec.model.secret_ref.name == "creds"
    assert spec.gpu is not None and spec.gpu.count == 1
    assert spec.gpu.resource_name == "nvidia.com/mig-1g.5gb"
    assert spec.autoscaling is not None and spec.autoscaling.min_replicas == 1
    assert spec.autoscaling.target_cpu_utilization_percentage == 50
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["autoscaling"]["targetCPUUtilizationPercentage"] == 50
    assert dumped["nodeSelector"] == {"pool": "inference"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "serving.modelservice.io/v1alpha1"
    assert doc["kind"] == "ModelService"
    assert path.read_text().startswith("#"), (
        "each example opens with a comment saying what it shows"
    )
    parse_spec(doc["spec"], doc["metadata"]["name"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"model": {"uri": URI}, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
            "spec.autoscaling.minReplicas: must be <= maxReplicas (got 5 > 3)",
        ),
        (
            {"model": {"uri": "ftp://host/m.onnx"}},
            "spec.model.uri: string should match pattern '^(https?|file|pvc|s3)://.+$' "
            "(got 'ftp://host/m.onnx')",
        ),
        (
            {"model": {"uri": "pvc://claim-only"}},
            "spec.model.uri: a pvc:// uri must be pvc://<claim>/<path inside the claim> "
            "(got 'pvc://claim-only')",
        ),
        (
            {"model": {"uri": URI, "sha256": "abc"}},
            "spec.model.sha256: string should match pattern '^[0-9a-fA-F]{64}$' (got 'abc')",
        ),
        (
            {"model": {"uri": URI}, "gpu": {"count": 0}},
            "spec.gpu.count: input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"model": {"uri": URI}, "replicas": -1},
            "spec.replicas: input should be greater than or equal to 0 (got -1)",
        ),
        (
            {"model": {"uri": URI}, "replicas": 10**9},
            "spec.replicas: input should be less than or equal to 1000 (got 1000000000)",
        ),
        (
            {"model": {"uri": URI}, "replicas": "two"},
            "spec.replicas: input should be a valid integer, unable to parse string as an integer "
            "(got 'two')",
        ),
        ({"model": {"uri": URI, "colour": "red"}}, "spec.model.colour: unknown field"),
        ({}, "spec.model: required"),
        ({"model": {"uri": URI}, "autoscaling": {}}, "spec.autoscaling.maxReplicas: required"),
        (
            {"model": {"uri": URI}, "resources": {"limits": {"memory": "2Gb"}}},
            "spec.resources.limits.memory: must be a Kubernetes quantity such as 500m, 2 or 1Gi "
            "(got '2Gb')",
        ),
        (
            {"model": {"uri": URI}, "resources": {"requests": {"cpu": -1}}},
            "spec.resources.requests.cpu: must be a Kubernetes quantity such as 500m, 2 or 1Gi "
            "(got -1)",
        ),
        (
            {"model": {"uri": URI}, "runtime": {"normalize": {"mean": [0.5, 0.5], "std": [1]}}},
            "spec.runtime.normalize.std: must have as many entries as mean (got 1 != 2)",
        ),
        (
            {"model": {"uri": URI}, "runtime": {"normalize": {"mean": [0.5], "std": [0]}}},
            "spec.runtime.normalize.std: entries must be non-zero (got [0.0])",
        ),
        (
            {
                "model": {"uri": URI},
                "runtime": {
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "MODELSERVICE_PORT", "value": "9"},
                    ]
                },
            },
            "spec.runtime.env[1].name: MODELSERVICE_PORT is set by the operator from other spec "
            "fields; set the matching spec field instead",
        ),
        (
            {
                "model": {"uri": URI},
                "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                "replicas": 9,
            },
            "spec.replicas: must lie within autoscaling.minReplicas..maxReplicas (got 9 outside "
            "2..4); while autoscaling is set the HorizontalPodAutoscaler owns the replica count",
        ),
        (
            {
                "model": {"uri": URI},
                "autoscaling": {"maxReplicas": 4},
                "resources": {"requests": {"memory": "1Gi"}},
            },
            "spec.resources.requests.cpu: required when autoscaling."
            "targetCPUUtilizationPercentage is set (utilization is measured against it)",
        ),
        (
            {
                "model": {"uri": URI},
                "autoscaling": {"maxReplicas": 4, "targetCPUUtilizationPercentage": 0},
            },
            "spec.autoscaling.targetCPUUtilizationPercentage: 0 disables the CPU target, which "
            "needs at least one entry in metrics",
        ),
        (
            {"model": {"uri": URI}, "gpu": {"resourceName": "not a resource"}},
            "spec.gpu.resourceName: string should match pattern "
            "'^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$' "
            "(got 'not a resource')",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec: dict, expected: str) -> None:
    assert expected in _errors(spec)


def test_every_error_is_reported_not_only_the_first() -> None:
    errors = _errors({"model": {"uri": "ftp://x", "sha256": "zz"}, "replicas": -3})
    fields = [e.split(":", 1)[0] for e in errors]
    assert fields == ["spec.model.uri", "spec.model.sha256", "spec.replicas"]


@pytest.mark.parametrize("name", ["9lives", "a.b", "x" * 64, "Upper"])
def test_names_the_service_cannot_carry_are_invalid(name: str) -> None:
    errors = _errors({"model": {"uri": URI}}, name)
    assert errors[0].startswith("metadata.name: must be a DNS-1035 label of at most 63")
    assert repr(name) in errors[0]


def test_invalid_spec_exception_summarises_and_names_first_field() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"model": {"uri": URI}, "autoscaling": {"minReplicas": 5, "maxReplicas": 3}})
    assert info.value.first_field == "spec.autoscaling.minReplicas"
    assert str(info.value) == "spec.autoscaling.minReplicas: must be <= maxReplicas (got 5 > 3)"


@pytest.mark.parametrize("uri", [
    "https://h/m.onnx", "http://h:8000/m.onnx", "file:///opt/m.onnx", "pvc://models/a/b.onnx",
    "s3://bucket/key.onnx",
])  # fmt: skip
def test_accepted_uri_schemes(uri: str) -> None:
    assert parse_spec({"model": {"uri": uri}}).model.uri == uri


def test_pvc_uri_is_split_into_claim_and_path() -> None:
    spec = parse_spec({"model": {"uri": "pvc://models/resnet/model.onnx"}})
    assert spec.model.pvc_claim_and_path == ("models", "resnet/model.onnx")
    assert parse_spec({"model": {"uri": URI}}).model.pvc_claim_and_path is None


def test_env_keeps_value_from_and_other_envvar_fields() -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    spec = parse_spec({"model": {"uri": URI}, "runtime": {"env": env}})
    assert spec.runtime.env[0].model_dump(by_alias=True) == env[0]


def test_operator_env_names_cover_the_flags_the_operator_sets() -> None:
    assert {"MODELSERVICE_MODEL", "MODELSERVICE_PORT", "MODELSERVICE_AUTH_TOKEN"} <= (
        OPERATOR_ENV_NAMES
    )


def test_quantities_accept_ints_and_canonical_strings() -> None:
    spec = ModelServiceSpec.model_validate(
        {
            "model": {"uri": URI},
            "resources": {
                "requests": {"cpu": 2, "memory": "1.5Gi"},
                "limits": {"ephemeral-storage": "10G"},
            },
        }
    )
    assert spec.resources.requests == {"cpu": 2, "memory": "1.5Gi"}
