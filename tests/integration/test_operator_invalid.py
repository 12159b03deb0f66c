"""Invalid ModelServices against the real API server and operator (issue 6).

Each bad manifest is either refused by a real `kubectl apply` with a message naming the field
(structural schema, patterns, bounds, CEL), or, where the schema cannot know, accepted and
reported in status as Ready=False / InvalidSpec naming the field, with a Warning event. The
valid ModelServices applied in the same batch become Ready regardless.
(`test_operator.py` covers a shorter server-dry-run table; this one applies for real, in a
batch beside valid ones.)
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Kubectl, condition, msvc, wait_phase, wait_until
from tests.integration.test_operator_faults import apply_list

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# (case, spec fields, field the error must name, words the error must contain)
REFUSED_AT_APPLY: list[tuple[str, dict[str, Any], str, str]] = [
    ("string for integer", {"runtime": {"batching": {"maxBatchSize": "big"}}},
     "spec.runtime.batching.maxBatchSize", "must be of type integer"),
    ("list for map", {"nodeSelector": ["gpu"]}, "spec.nodeSelector", "must be of type object"),
    ("string for object", {"gpu": "yes"}, "spec.gpu", "must be of type object"),
    ("float for integer", {"replicas": 1.5}, "spec.replicas", "must be of type integer"),
    ("unknown field", {"colour": "red"}, "spec.colour", "unknown field"),
    ("unknown nested field", {"autoscaling": {"maxReplicas": 2, "maxReplica": 3}},
     "spec.autoscaling.maxReplica", "unknown field"),
    ("missing model", {"model": None}, "spec.model", "Required value"),
    ("ftp uri", {"model": {"uri": "ftp://host/m.onnx"}}, "spec.model.uri", "should match"),
    ("javascript: uri", {"model": {"uri": "javascript:alert(1)"}}, "spec.model.uri",
     "should match"),
    ("empty uri", {"model": {"uri": ""}}, "spec.model.uri", "at least 1 chars"),
    ("pvc uri without path", {"model": {"uri": "pvc://claim"}}, "spec.model.uri",
     "pvc://<claim>/<path"),
    ("minReplicas > maxReplicas", {"autoscaling": {"minReplicas": 4, "maxReplicas": 2}},
     "spec.autoscaling.minReplicas", "must be <= maxReplicas"),
    ("replicas outside min..max with autoscaling",
     {"replicas": 9, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
     "spec.replicas", "HorizontalPodAutoscaler owns the replica count"),
    ("negative GPUs", {"gpu": {"count": -1}}, "spec.gpu.count", "greater than or equal to 1"),
    ("zero GPUs", {"gpu": {"count": 0}}, "spec.gpu.count", "greater than or equal to 1"),
    ("negative threads", {"runtime": {"threads": {"intraOp": -4}}},
     "spec.runtime.threads.intraOp", "greater than or equal to 0"),
    ("huge replicas", {"replicas": 10**12}, "spec.replicas", "less than or equal to 1000"),
    ("2^63 batch size", {"runtime": {"batching": {"maxBatchSize": 2**63}}},
     "spec.runtime.batching.maxBatchSize", "integer"),
    ("1e300 replicas", {"replicas": 1e300}, "spec.replicas", "integer"),
    ("quantity 1.5.5", {"resources": {"requests": {"cpu": "1.5.5"}}},
     "spec.resources.requests.cpu", "should match"),
    ("quantity 2GB", {"resources": {"limits": {"memory": "2GB"}}},
     "spec.resources.limits.memory", "should match"),
    ("negative quantity", {"resources": {"requests": {"cpu": "-1"}}},
     "spec.resources.requests.cpu", "should match"),
    ("short sha256", {"model": {"uri": "https://h/m.onnx", "sha256": "abc123"}},
     "spec.model.sha256", "should match"),
    ("non-hex sha256", {"model": {"uri": "https://h/m.onnx", "sha256": "z" * 64}},
     "spec.model.sha256", "should match"),
    ("normalize std 0", {"runtime": {"normalize": {"mean": [0.5], "std": [0.0]}}},
     "spec.runtime.normalize.std", "non-zero"),
    ("env name with a space", {"runtime": {"env": [{"name": "1 bad", "value": "x"}]}},
     "spec.runtime.env[0].name", "should match"),
    ("bad GPU resource name", {"gpu": {"resourceName": "nvidia.com/gpu/../x"}},
     "spec.gpu.resourceName", "should match"),
    ("canary percent over 100",
     {"canary": {"model": {"uri": "https://h/m2.onnx"}, "trafficPercent": 101}},
     "spec.canary.trafficPercent", "less than or equal to 100"),
    ("canary without a model", {"canary": {"trafficPercent": 10}}, "spec.canary.model",
     "Required value"),
    ("canary names its own served model",
     {"canary": {"model": {"uri": "https://h/m2.onnx", "name": "other"}}},
     "spec.canary.model.name", "unknown field"),
    ("canary pvc uri without path", {"canary": {"model": {"uri": "pvc://claim"}}},
     "spec.canary.model.uri", "pvc://<claim>/<path"),
    ("gateway without a name", {"gateway": {"namespace": "infra"}}, "spec.gateway.name",
     "Required value"),
]  # fmt: skip

# Accepted by the schema, refused by the operator (or by the API server when the operator
# applies the child it renders): (name, spec, field named in status, Warning event reason).
REPORTED_IN_STATUS: list[tuple[str, dict[str, Any], str]] = [
    ("shadow-env", {"runtime": {"env": [{"name": "MODELSERVICE_AUTH_TOKEN", "value": "x"}]}},
     "spec.runtime.env[0].name"),
    ("request-over-limit",
     {"resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "1"}}},
     "resources.requests"),
    ("bad-toleration", {"tolerations": [{"key": "k", "operator": "Sometimes"}]},
     "tolerations[0].operator"),
]  # fmt: skip

VALID = [
    msvc("valid-fixed", replicas=2),
    msvc("valid-auto", autoscaling={"minReplicas": 1, "maxReplicas": 3}),
    # replicas inside min..max while autoscaling: allowed, ignored (the HPA owns the count)
    msvc("valid-both", replicas=2, autoscaling={"minReplicas": 1, "maxReplicas": 3}),
]


def _manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    manifest = msvc(name, **spec)
    if manifest["spec"].get("model") is None:
        del manifest["spec"]["model"]
    return manifest


def test_bad_manifests_are_refused_or_reported_and_valid_ones_still_serve(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    # Valid and operator-invalid ModelServices in one List, as a directory of manifests would
    # be applied. (A List that also holds a schema-invalid item is refused whole by kubectl's
    # client-side validation, so those are applied one by one below, in the same namespace.)
    apply_list(kctl, ns, VALID + [_manifest(n, s) for n, s, _ in REPORTED_IN_STATUS])

    # Each refused manifest on its own: refused, the message names the field.
    wrong = []
    for case, spec, field, words in REFUSED_AT_APPLY:
        one = kctl.apply(_manifest("refused", spec), ns, check=False)
        if one.returncode == 0 or field not in one.stderr or words not in one.stderr:
            wrong.append(f"{case}: rc={one.returncode} {one.stderr.strip()[:300]}")
    assert wrong == [], "\n".join(wrong)
    created = {o["metadata"]["name"] for o in kctl.list("msvc", ns)}
    assert not {n for n in created if n.startswith("refused")}, created

    # The valid ones serve.
    for body in VALID:
        obj = wait_phase(kctl, ns, body["metadata"]["name"], "Ready", timeout=120)
        assert condition(obj, "Ready")["status"] == "True"
    assert kctl.get("deployment", "valid-fixed", ns)["spec"]["replicas"] == 2
    wait_until(
        "a ReplicasIgnored event on valid-both (replicas set beside autoscaling)",
        lambda: any(e["reason"] == "ReplicasIgnored" for e in kctl.events(ns, "valid-both")),
    )

    # The ones only the operator (or the API server, on the child) can judge.
    for name, _, field in REPORTED_IN_STATUS:
        obj = wait_phase(kctl, ns, name, "Failed", timeout=90)
        ready = condition(obj, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), (name, ready)
        assert field in ready["message"], (name, ready["message"])
        wait_until(
            f"a Warning event on {name} naming {field}",
            lambda name=name, field=field: any(
                e["type"] == "Warning" and field in e["message"] for e in kctl.events(ns, name)
            ),
        )
    assert kctl.maybe_get("deployment", "shadow-env", ns) is None

    # Fixing one of the Failed ones recovers that same object without touching the operator;
    # the valid ones never moved.
    failed = kctl.get("msvc", "request-over-limit", ns)
    fixed = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}}
    apply_list(kctl, ns, [msvc("request-over-limit", resources=fixed)])
    obj = wait_phase(kctl, ns, "request-over-limit", "Ready", timeout=120)
    assert obj["metadata"]["uid"] == failed["metadata"]["uid"], "recovered, not re-created"
    assert obj["metadata"]["generation"] > failed["metadata"]["generation"]
    assert condition(obj, "Ready")["status"] == "True"
    containers = kctl.get("deployment", "request-over-limit", ns)["spec"]["template"]["spec"][
        "containers"
    ]
    runtime = next(c for c in containers if c["name"] == "runtime")
    assert runtime["resources"]["requests"]["cpu"] == "500m", runtime["resources"]
    for body in VALID:
        wait_phase(kctl, ns, body["metadata"]["name"], "Ready", timeout=30)
