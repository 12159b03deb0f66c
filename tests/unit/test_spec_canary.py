"""spec.canary and spec.gateway: defaults, the canary's derived spec, refused values naming
their field, and the CRD schema the API server checks them with."""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator import crd
from modelservice_operator.spec import InvalidSpec, parse_spec

URI = "https://models.example.com/m.onnx"
URI2 = "https://models.example.com/m2.onnx"
SHA = "a" * 64


def _errors(spec: dict[str, Any], name: str = "m") -> list[str]:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(spec, name)
    return info.value.errors


def test_canary_defaults_to_no_traffic() -> None:
    spec = parse_spec({"model": {"uri": URI}, "canary": {"model": {"uri": URI2}}}, "m")
    assert spec.canary is not None
    assert spec.canary.traffic_percent == 0
    assert spec.canary.runtime.image is None and spec.canary.runtime.env is None
    assert spec.gateway is None


def test_canary_revision_takes_the_canarys_model_and_keeps_the_served_name() -> None:
    spec = parse_spec(
        {
            "model": {"uri": URI, "name": "resnet", "sha256": SHA, "secretRef": {"name": "a"}},
            "runtime": {"image": "rt:1", "env": [{"name": "A", "value": "1"}]},
            "replicas": 4,
            "canary": {
                "model": {"uri": URI2, "secretRef": {"name": "b"}},
                "runtime": {"image": "rt:2"},
                "trafficPercent": 25,
            },
        },
        "m",
    )
    canary = spec.canary_revision
    assert canary is not None
    assert canary.model.uri == URI2
    assert canary.model.name == "resnet"  # the primary's served name
    assert canary.model.sha256 is None  # not inherited: another model, another digest
    assert canary.model.secret_ref is not None and canary.model.secret_ref.name == "b"
    assert canary.runtime.image == "rt:2"
    assert [v.name for v in canary.runtime.env] == ["A"]  # absent override: the primary's
    assert canary.canary is None and canary.replicas == 4


def test_canary_env_replaces_the_primarys() -> None:
    spec = parse_spec(
        {
            "model": {"uri": URI},
            "runtime": {"env": [{"name": "A", "value": "1"}]},
            "canary": {"model": {"uri": URI2}, "runtime": {"env": [{"name": "B", "value": "2"}]}},
        },
        "m",
    )
    assert spec.canary_revision is not None
    assert [v.name for v in spec.canary_revision.runtime.env] == ["B"]


def test_a_pvc_canary_drops_the_primarys_cache() -> None:
    spec = parse_spec(
        {
            "model": {"uri": URI, "cache": {"claimName": "c"}},
            "canary": {"model": {"uri": "pvc://models/v2/model.onnx"}},
        },
        "m",
    )
    assert spec.canary_revision is not None and spec.canary_revision.model.cache is None


def test_adding_a_canary_or_gateway_does_not_change_the_primarys_pods() -> None:
    plain = parse_spec({"model": {"uri": URI}}, "m")
    with_canary = parse_spec(
        {
            "model": {"uri": URI},
            "canary": {"model": {"uri": URI2}, "trafficPercent": 10},
            "gateway": {"name": "gw"},
        },
        "m",
    )
    assert plain.pod_template_hash == with_canary.pod_template_hash
    assert with_canary.canary_revision is not None
    assert with_canary.canary_revision.pod_template_hash != plain.pod_template_hash


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"canary": {"model": {"uri": URI2}, "trafficPercent": 101}},
            "spec.canary.trafficPercent: input should be less than or equal to 100",
        ),
        (
            {"canary": {"model": {"uri": URI2}, "trafficPercent": -1}},
            "spec.canary.trafficPercent: input should be greater than or equal to 0",
        ),
        ({"canary": {"trafficPercent": 10}}, "spec.canary.model: required"),
        (
            {"canary": {"model": {"uri": "ftp://x"}}},
            "spec.canary.model.uri: string should match pattern",
        ),
        (
            {"canary": {"model": {"uri": URI2, "sha256": "zz"}}},
            "spec.canary.model.sha256: string should match pattern",
        ),
        (
            {"canary": {"model": {"uri": URI2, "name": "other"}}},
            "spec.canary.model.name: unknown field",
        ),
        (
            {"canary": {"model": {"uri": "pvc://claim"}}},
            "spec.canary.model.uri: a pvc:// uri must be pvc://<claim>/<path inside the claim>",
        ),
        (
            {
                "canary": {
                    "model": {"uri": URI2},
                    "runtime": {"env": [{"name": "MODELSERVICE_PORT", "value": "1"}]},
                }
            },
            "spec.canary.runtime.env[0].name: MODELSERVICE_PORT is set by the operator",
        ),
        (
            {"canary": {"model": {"uri": URI2}, "runtime": {"batching": {}}}},
            "spec.canary.runtime.batching: unknown field",
        ),
        ({"gateway": {"name": "Not_A_Name"}}, "spec.gateway.name: string should match pattern"),
        ({"gateway": {"namespace": "ns"}}, "spec.gateway.name: required"),
        (
            {"gateway": {"name": "gw", "namespace": "a.b"}},
            "spec.gateway.namespace: string should match pattern",
        ),
    ],
)
def test_bad_canary_and_gateway_values_name_the_field(spec: dict[str, Any], expected: str) -> None:
    errors = _errors({"model": {"uri": URI}, **spec})
    assert any(e.startswith(expected) for e in errors), errors


def test_a_canary_needs_room_in_the_name_for_the_revision_services() -> None:
    name = "x" * 56
    parse_spec({"model": {"uri": URI}}, name)  # fine without a canary
    errors = _errors({"model": {"uri": URI}, "canary": {"model": {"uri": URI2}}}, name)
    assert errors == [
        "metadata.name: at most 55 characters with spec.canary, because the Services "
        "<name>-primary and <name>-canary carry it (got 56)"
    ]


def _spec_schema() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_crd_bounds_the_percent_and_describes_every_canary_field() -> None:
    canary = _spec_schema()["properties"]["canary"]
    percent = canary["properties"]["trafficPercent"]
    assert (percent["minimum"], percent["maximum"], percent["default"]) == (0, 100, 0)
    assert canary["required"] == ["model"]
    assert "name" not in canary["properties"]["model"]["properties"]
    assert canary["properties"]["model"]["x-kubernetes-validations"][0]["fieldPath"] == ".uri"
    gateway = _spec_schema()["properties"]["gateway"]
    assert gateway["required"] == ["name"]
    for schema in (canary, gateway, *canary["properties"].values()):
        assert schema["description"]
