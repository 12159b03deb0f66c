"""The committed CRD is exactly what the pydantic models generate, and it is a useful one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from modelservice_operator import crd
from modelservice_operator.spec import ModelServiceSpec, parse_spec

from tests.needs import needed

REPO = Path(__file__).resolve().parents[2]


def _version() -> dict[str, Any]:
    return crd.build_crd()["spec"]["versions"][0]


def _spec_schema() -> dict[str, Any]:
    return _version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}")
    if "items" in schema:
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_committed_crd_matches_the_models() -> None:
    committed = (REPO / "crds" / crd.CRD_FILE).read_text()
    assert committed == crd.render_yaml(), "crds/ is stale: run `make crd`"


def test_chart_copy_matches_when_the_chart_has_a_crds_dir() -> None:
    chart_copy = REPO / "charts" / "modelservice-operator" / "crds" / crd.CRD_FILE
    if not chart_copy.parent.is_dir():
        needed("charts/modelservice-operator/crds/ does not exist (make crd)")
    assert chart_copy.read_text() == crd.render_yaml(), "chart CRD is stale: run `make crd`"


def test_check_flag_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / crd.CRD_FILE
    monkeypatch.setattr(crd, "CRD_PATH", target)
    monkeypatch.setattr(crd, "CHART_CRD_DIR", tmp_path / "no-chart")
    assert crd.main(["--check"]) == 1  # missing
    assert crd.main(["--write"]) == 0
    assert crd.main(["--check"]) == 0
    target.write_text(target.read_text().replace("default: 32", "default: 33"))
    assert crd.main(["--check"]) == 1


def test_names_scope_and_short_name() -> None:
    spec = crd.build_crd()["spec"]
    assert spec["group"] == "serving.modelservice.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ModelService"
    assert spec["names"]["plural"] == "modelservices"
    assert spec["names"]["shortNames"] == ["msvc"]
    assert _version()["name"] == "v1alpha1"


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    root = _version()["schema"]["openAPIV3Schema"]
    missing = [
        p
        for p, s in _walk(root)
        if p not in ("", ".metadata") and not p.endswith(("[]", "{}")) and not s.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    """Every node has a type, or is int-or-string / preserve-unknown-fields."""
    root = _version()["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), f"{path or '<root>'} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"


def test_passthrough_core_types_preserve_unknown_fields() -> None:
    spec = _spec_schema()["properties"]
    assert spec["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    auto = spec["autoscaling"]["properties"]
    assert auto["metrics"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert auto["behavior"]["x-kubernetes-preserve-unknown-fields"] is True
    env_item = spec["runtime"]["properties"]["env"]["items"]
    assert env_item["x-kubernetes-preserve-unknown-fields"] is True
    assert env_item["required"] == ["name"]
    cpu = spec["resources"]["properties"]["requests"]["additionalProperties"]
    assert cpu["x-kubernetes-int-or-string"] is True and "pattern" in cpu


def test_cel_rules_cover_the_cross_field_checks() -> None:
    spec = _spec_schema()
    rules = {
        r["rule"]: r for _, node in _walk(spec) for r in node.get("x-kubernetes-validations", [])
    }
    text = " ".join(rules)
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert "self.replicas >= self.autoscaling.minReplicas" in text
    assert "'cpu' in self.resources.requests" in text
    assert "size(self.mean) == size(self.std)" in rules
    assert "pvc://" in text
    assert all(r.get("fieldPath", ".").startswith(".") for r in rules.values())
    props = spec["properties"]
    assert props["model"]["properties"]["uri"]["pattern"] == "^(https?|file|pvc|s3)://.+$"
    assert props["model"]["properties"]["sha256"]["pattern"] == "^[0-9a-fA-F]{64}$"
    assert props["gpu"]["properties"]["count"]["minimum"] == 1


def test_status_and_scale_subresources() -> None:
    sub = _version()["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    status = _version()["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {
        "observedGeneration",
        "phase",
        "url",
        "replicas",
        "readyReplicas",
        "conditions",
        "selector",
        "replicaSummary",
    } <= set(status)


def test_printer_columns() -> None:
    cols = {c["name"]: c for c in _version()["additionalPrinterColumns"]}
    assert list(cols) == ["Ready", "Phase", "Replicas", "URL", "Age"]
    assert cols["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert cols["Replicas"]["jsonPath"] == ".status.replicaSummary"
    assert cols["Age"]["type"] == "date"


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server's structural defaulting does (enough of it for this schema)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = yaml.safe_load(yaml.safe_dump(sub["default"]))
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
    if isinstance(value, list) and "items" in schema:
        return [_apply_defaults(schema["items"], v) for v in value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        {"model": {"uri": "https://h/m.onnx"}},
        {"model": {"uri": "https://h/m.onnx"}, "gpu": {}, "autoscaling": {"maxReplicas": 3}},
        {
            "model": {"uri": "https://h/m.onnx"},
            "runtime": {"auth": {"secretRef": {"name": "t"}}, "batching": {"maxBatchSize": 8}},
            "resources": {"limits": {"memory": "2Gi"}},
        },
    ],
)
def test_server_defaults_equal_model_defaults(raw: dict[str, Any]) -> None:
    """A spec defaulted by the CRD schema parses to exactly what pydantic fills in itself."""
    defaulted = _apply_defaults(_spec_schema(), yaml.safe_load(yaml.safe_dump(raw)))
    from_server = ModelServiceSpec.model_validate(defaulted)
    assert from_server == parse_spec(raw)
    # and the server-side object already shows every default the operator relies on
    model_defaults = parse_spec(raw).model_dump(by_alias=True, exclude_none=True)
    for key in ("runtime", "resources"):
        assert defaulted[key] == {k: v for k, v in model_defaults[key].items() if v not in ({}, [])}
