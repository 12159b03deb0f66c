"""The operator against the real local control plane: examples, children, status, GPU
scheduling, validation, updates, drift, scaling and garbage collection.

The operator runs as `modelservice operator` (a subprocess, see conftest.py); kwok turns the
pods the scheduler binds Running and Ready, so phases and replica counts are real.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import (
    TEST_RUNTIME_IMAGE,
    Kubectl,
    OperatorProcess,
    condition,
    msvc,
    wait_phase,
    wait_until,
)
from tests.integration.nodes import fake_placed

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KOPF_PREFIX = "serving.modelservice.io/"  # the operator's kopf progress/diff-base annotations

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GPU_NODE = "kwok-gpu-0"
CPU_NODES = {"kwok-cpu-0", "kwok-cpu-1"}
LABELS = {
    "app.kubernetes.io/name": "modelservice-runtime",
    "app.kubernetes.io/managed-by": "modelservice-operator",
}


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def msvc_when(k: Kubectl, ns: str, name: str, pred: Any) -> dict[str, Any] | None:
    """The ModelService when `pred(obj)` holds (and it has a status), else None."""
    obj = k.get("msvc", name, ns)
    return obj if obj.get("status") and pred(obj) else None


def owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(
        r["kind"] == "ModelService"
        and r["name"] == owner["metadata"]["name"]
        and r["uid"] == owner["metadata"]["uid"]
        and r.get("controller")
        and r.get("blockOwnerDeletion")
        for r in child["metadata"].get("ownerReferences") or []
    )


def pods(k: Kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    return k.list("pods", ns, f"app.kubernetes.io/instance={name}")


# --- examples and children -----------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_apiserver(
    kctl: Kubectl, msvc_namespace: str, path: Path
) -> None:
    """Each manifest users copy (llm-inflight.yaml too) passes the CRD's schema and CEL
    rules on the real apiserver: a server-side dry run, nothing created."""
    done = kctl.run("apply", "--dry-run=server", "-n", msvc_namespace, "-f", str(path),
                    check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created (server dry run)" in done.stdout, done.stdout


def test_cpu_autoscaled_example_becomes_ready_with_all_children(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns, manifest = msvc_namespace, example("cpu-autoscaled.yaml")
    name = manifest["metadata"]["name"]
    kctl.apply(fake_placed(example("cpu-autoscaled.yaml")), ns)
    obj = wait_phase(kctl, ns, name, "Ready")
    st = obj["status"]
    assert st["url"] == f"http://{name}.{ns}.svc.cluster.local"
    assert st["readyReplicas"] >= 1 and st["replicaSummary"].endswith(f"/{st['desiredReplicas']}")
    assert condition(obj, "Ready")["status"] == "True"
    assert condition(obj, "Available")["status"] == "True"
    assert condition(obj, "Progressing")["reason"] == "RolloutComplete"
    # no finalizer: deleting a ModelService never waits for the operator
    assert not obj["metadata"].get("finalizers")
    # server-side defaults from the CRD schema are visible on the object
    assert obj["spec"]["model"]["uri"].startswith("https://")
    assert obj["spec"]["resources"]["requests"]["cpu"] == "1"

    dep = kctl.get("deployment", name, ns)
    assert owned_by(dep, obj)
    assert LABELS.items() <= dep["metadata"]["labels"].items()
    assert dep["metadata"]["labels"]["app.kubernetes.io/instance"] == name
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (init,) = pod["initContainers"]
    (runtime,) = pod["containers"]
    assert init["name"] == "model-fetch" and runtime["name"] == "runtime"
    assert init["command"][:4] == [
        "modelservice",
        "fetch",
        manifest["spec"]["model"]["uri"],
        "/models/model.onnx",
    ]
    assert runtime["image"] == TEST_RUNTIME_IMAGE
    cmd = runtime["command"]
    assert cmd[:3] == ["modelservice", "serve", "/models/model.onnx"]
    assert cmd[cmd.index("--max-batch-size") + 1] == "16"
    assert cmd[cmd.index("--name") + 1] == "resnet"
    assert cmd[cmd.index("--normalize-mean") + 1] == "0.485,0.456,0.406"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert runtime["securityContext"]["readOnlyRootFilesystem"] is True
    assert runtime["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    # The HPA owns spec.replicas: our field manager must not.
    managed = json.loads(
        kctl.run("get", "deployment", name, "-n", ns, "-o", "json", "--show-managed-fields").stdout
    )["metadata"]["managedFields"]
    ours = [m for m in managed if m["manager"] == "modelservice-operator"]
    assert ours and ours[0]["operation"] == "Apply"
    assert "f:replicas" not in json.dumps(ours[0]["fieldsV1"]["f:spec"])

    svc = kctl.get("service", name, ns)
    assert owned_by(svc, obj)
    assert svc["spec"]["ports"][0]["port"] == 80 and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "modelservice-runtime",
        "app.kubernetes.io/instance": name,
    }

    hpa = kctl.get("hpa", name, ns)
    assert owned_by(hpa, obj)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    # the request-driven Pods metric was accepted by the real apiserver unchanged
    assert hpa["spec"]["metrics"][1] == manifest["spec"]["autoscaling"]["metrics"][0]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30

    pdb = kctl.get("pdb", name, ns)
    assert owned_by(pdb, obj) and pdb["spec"]["maxUnavailable"] == 1

    # pods exist, on CPU nodes only, Running (kwok)
    running = pods(kctl, ns, name)
    assert running and all(p["spec"]["nodeName"] in CPU_NODES for p in running)
    wait_until(
        "a Normal event 'Applied' on the ModelService",
        lambda: any(e["reason"] == "Applied" for e in kctl.events(ns, name)),
    )


def test_gpu_example_pods_land_on_the_gpu_node_only(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(fake_placed(example("gpu.yaml")), ns)
    name = example("gpu.yaml")["metadata"]["name"]
    wait_phase(kctl, ns, name, "Ready")
    dep = kctl.get("deployment", name, ns)
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod_spec["tolerations"]
    )
    cmd = pod_spec["containers"][0]["command"]
    assert cmd[cmd.index("--execution-provider") + 1] == "cuda"
    placed = pods(kctl, ns, name)
    assert placed and {p["spec"]["nodeName"] for p in placed} == {GPU_NODE}

    # A CPU ModelService next to it never lands on the (tainted) GPU node.
    kctl.apply(msvc("cpu-neighbour", replicas=3), ns)
    wait_phase(kctl, ns, "cpu-neighbour", "Ready")
    assert {p["spec"]["nodeName"] for p in pods(kctl, ns, "cpu-neighbour")} <= CPU_NODES


def test_more_gpus_than_any_node_has_stays_pending(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("too-many-gpus", gpu={"count": 8}), ns)

    def unschedulable() -> bool:
        ps = pods(kctl, ns, "too-many-gpus")
        return bool(ps) and all(
            c.get("reason") == "Unschedulable"
            for p in ps
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled"
        )

    wait_until("the 8-GPU pod to be Unschedulable", unschedulable)
    # The operator watches the pods: the status says why, in the scheduler's words.
    obj = wait_until(
        "msvc/too-many-gpus Ready=False reason Unschedulable",
        lambda: msvc_when(
            kctl,
            ns,
            "too-many-gpus",
            lambda o: condition(o, "Ready").get("reason") == "Unschedulable",
        ),
    )
    assert obj["status"]["phase"] == "Pending"
    assert "nvidia.com/gpu" in condition(obj, "Ready")["message"], condition(obj, "Ready")
    warnings = wait_until(
        "a Warning event Unschedulable on msvc/too-many-gpus",
        lambda: [
            e
            for e in kctl.events(ns, "too-many-gpus")
            if e["type"] == "Warning" and e["reason"] == "Unschedulable"
        ],
    )
    assert "nvidia.com/gpu" in warnings[0]["message"], warnings


# --- validation --------------------------------------------------------------------------------

BAD_MANIFESTS = [
    (
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
        "spec.autoscaling.minReplicas",
        "must be <= maxReplicas",
    ),
    ({"model": {"uri": "ftp://host/m.onnx"}}, "spec.model.uri", "should match"),
    ({"model": {"uri": "pvc://only-a-claim"}}, "spec.model.uri", "pvc://<claim>/<path"),
    ({"model": {"uri": "https://h/m.onnx", "sha256": "xyz"}}, "spec.model.sha256", "should match"),
    ({"gpu": {"count": 0}}, "spec.gpu.count", "should be greater than or equal to 1"),
    ({"gpu": {"count": -2}}, "spec.gpu.count", "greater than or equal to 1"),
    ({"replicas": 100000}, "spec.replicas", "less than or equal to 1000"),
    ({"replicas": "two"}, "spec.replicas", "integer"),
    (
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}, "replicas": 7},
        "spec.replicas",
        "HorizontalPodAutoscaler owns the replica count",
    ),
    ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory", "should match"),
    (
        {"runtime": {"normalize": {"mean": [1, 2], "std": [1]}}},
        "spec.runtime.normalize.std",
        "as many entries as mean",
    ),
    ({"model": {"uri": "https://h/m.onnx", "colour": "red"}}, "spec.model.colour", "unknown field"),
    (
        {"autoscaling": {"maxReplicas": 3}, "resources": {"requests": {"memory": "1Gi"}}},
        "spec.resources",
        "requests.cpu is required",
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    BAD_MANIFESTS,
    ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_MANIFESTS)],
)
def test_invalid_manifests_are_refused_by_kubectl_apply(
    kctl: Kubectl, modelservice_crd: str, spec: dict, field: str, message: str
) -> None:
    manifest = msvc("bad", **spec)
    if "model" in spec:
        manifest["spec"]["model"] = spec["model"]
    proc = kctl.run(
        "apply",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        "-",
        stdin=json.dumps(manifest),
        check=False,
    )
    assert proc.returncode != 0, f"accepted: {spec}"
    assert field in proc.stderr and message in proc.stderr, proc.stderr


def test_invalid_spec_the_schema_cannot_catch_is_reported_in_status(
    kctl: Kubectl, msvc_namespace: str, modelservice_operator: OperatorProcess
) -> None:
    ns = msvc_namespace
    bad = msvc("shadowing", runtime={"env": [{"name": "MODELSERVICE_PORT", "value": "9"}]})
    kctl.apply(bad, ns)
    obj = wait_phase(kctl, ns, "shadowing", "Failed")
    ready = condition(obj, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"].startswith("spec.runtime.env[0].name: MODELSERVICE_PORT is set by")
    wait_until(
        "a Warning event InvalidSpec naming spec.runtime.env[0].name",
        lambda: any(
            e["type"] == "Warning"
            and e["reason"] == "InvalidSpec"
            and "spec.runtime.env[0].name" in e["message"]
            for e in kctl.events(ns, "shadowing")
        ),
    )
    # PermanentError: kopf is done with this object, no retry pending. kopf logs when it has
    # finished a cause ("Creation is processed: ..."); a retry scheduled instead would keep a
    # progress annotation with `delayed` on the object. Wait for that line, then count.
    log = modelservice_operator.log_path
    wait_until(
        "the operator log line 'shadowing] Creation is processed: 0 succeeded; 1 failed'",
        lambda: f"{ns}/shadowing] Creation is processed: 0 succeeded; 1 failed" in log.read_text(),
        timeout=30,
    )
    annotations = kctl.get("msvc", "shadowing", ns)["metadata"].get("annotations") or {}
    progress = {k: v for k, v in annotations.items() if k.startswith(KOPF_PREFIX)}
    for bookkeeping in ("last-handled-configuration", "kopf-managed"):
        progress.pop(KOPF_PREFIX + bookkeeping, None)
    assert progress == {}, f"kopf still has a handler in progress (a retry?): {progress}"
    assert kctl.maybe_get("deployment", "shadowing", ns) is None
    attempts = log.read_text().count(
        f"{ns}/shadowing] Handler 'reconcile_modelservice' failed permanently: invalid spec"
    )
    assert attempts == 1, f"{attempts} attempts; PermanentError must stop at one"

    # A name the Service cannot carry (valid for the CRD, not for a DNS-1035 label).
    kctl.apply(msvc("1st-model"), ns)
    obj = wait_phase(kctl, ns, "1st-model", "Failed")
    assert condition(obj, "Ready")["message"].startswith("metadata.name: must be a DNS-1035")

    # Fixing the spec recovers without an operator restart.
    kctl.apply(
        msvc("shadowing", runtime={"env": [{"name": "MODELSERVICE_LOG_LEVEL", "value": "debug"}]}),
        ns,
    )
    obj = wait_phase(kctl, ns, "shadowing", "Ready")
    assert condition(obj, "Ready")["reason"] == "AllReplicasReady"


def test_passed_through_fields_the_api_refuses_are_reported_as_invalid_spec(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    bad_metric = {
        "type": "Pods",
        "pods": {"metric": {"name": "x"}, "target": {"type": "Utilization"}},
    }
    kctl.apply(msvc("bad-metric", autoscaling={"maxReplicas": 2, "metrics": [bad_metric]}), ns)
    obj = wait_phase(kctl, ns, "bad-metric", "Failed")
    ready = condition(obj, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"].startswith("refused by the API server: HorizontalPodAutoscaler")
    assert "spec.metrics[1]" in ready["message"], ready["message"]


# --- update, scale, drift, delete --------------------------------------------------------------


def _fixed(kctl: Kubectl, ns: str) -> tuple[str, dict[str, Any]]:
    kctl.run("create", "secret", "generic", "mlp-token", "-n", ns, "--from-literal=token=t0k3n")
    kctl.apply(fake_placed(example("fixed-replicas.yaml")), ns)
    name = example("fixed-replicas.yaml")["metadata"]["name"]
    return name, wait_phase(kctl, ns, name, "Ready")


def test_fixed_replicas_example_and_spec_update_rolls_the_deployment(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    name, obj = _fixed(kctl, ns)
    assert obj["status"]["replicaSummary"] == "2/2"
    assert kctl.maybe_get("hpa", name, ns) is None
    dep = kctl.get("deployment", name, ns)
    assert dep["spec"]["replicas"] == 2
    runtime = dep["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "MODELSERVICE_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "mlp-token", "key": "token"}},
    } in runtime["env"]
    # workers: 0 -> one per CPU of the pod's limit (2), not of its request (500m)
    assert runtime["command"][runtime["command"].index("--workers") + 1] == "2"
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][-2:] == ["--sha256", obj["spec"]["model"]["sha256"]]
    old_hash = dep["spec"]["template"]["metadata"]["annotations"][
        "serving.modelservice.io/spec-hash"
    ]
    old_rs = {
        rs["metadata"]["name"] for rs in kctl.list("rs", ns, f"app.kubernetes.io/instance={name}")
    }

    kctl.run(
        "patch",
        "msvc",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"runtime": {"batching": {"maxBatchSize": 4}}}}),
    )
    wait_until(
        "the Deployment template to carry the new batch size",
        lambda: (
            "4"
            in (
                (
                    c := kctl.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][
                        0
                    ]["command"]
                )[c.index("--max-batch-size") + 1]
            )
        ),
    )
    dep = kctl.get("deployment", name, ns)
    assert (
        dep["spec"]["template"]["metadata"]["annotations"]["serving.modelservice.io/spec-hash"]
        != old_hash
    )
    new_rs = {
        rs["metadata"]["name"] for rs in kctl.list("rs", ns, f"app.kubernetes.io/instance={name}")
    }
    assert new_rs - old_rs, "a new ReplicaSet rolls the change out"
    obj = wait_phase(kctl, ns, name, "Ready")
    assert obj["status"]["readyReplicas"] == 2


def test_kubectl_scale_on_fixed_and_autoscaled(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    name, _ = _fixed(kctl, ns)
    kctl.run("scale", f"msvc/{name}", "-n", ns, "--replicas", "3")
    wait_until(
        "Deployment scaled to 3 by kubectl scale msvc",
        lambda: kctl.get("deployment", name, ns)["spec"]["replicas"] == 3,
    )
    obj = wait_until(
        "status 3/3",
        lambda: msvc_when(
            kctl,
            ns,
            name,
            lambda o: (
                o["status"].get("replicaSummary") == "3/3" and o["status"].get("readyReplicas") == 3
            ),
        ),
    )
    assert obj["spec"]["replicas"] == 3
    scale = json.loads(
        kctl.run(
            "get",
            "--raw",
            f"/apis/serving.modelservice.io/v1alpha1/namespaces/{ns}/modelservices/{name}/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == (
        f"app.kubernetes.io/instance={name},app.kubernetes.io/name=modelservice-runtime"
    )

    # Autoscaled: in range is accepted but the HPA owns the count; out of range is refused.
    kctl.apply(msvc("auto", autoscaling={"minReplicas": 1, "maxReplicas": 3}), ns)
    wait_phase(kctl, ns, "auto", "Ready")
    kctl.run("scale", "msvc/auto", "-n", ns, "--replicas", "2")
    obj = wait_until(
        "ReplicasIgnored condition",
        lambda: msvc_when(kctl, ns, "auto", lambda o: condition(o, "ReplicasIgnored")),
    )
    assert (
        "HorizontalPodAutoscaler owns the replica count"
        in condition(obj, "ReplicasIgnored")["message"]
    )
    wait_until(
        "a ReplicasIgnored event",
        lambda: any(e["reason"] == "ReplicasIgnored" for e in kctl.events(ns, "auto")),
    )
    assert kctl.get("hpa", "auto", ns)["spec"]["maxReplicas"] == 3
    refused = kctl.run("scale", "msvc/auto", "-n", ns, "--replicas", "9", check=False)
    assert refused.returncode != 0 and "spec.replicas" in refused.stderr


def test_status_says_when_scaling_is_limited(kctl: Kubectl, msvc_namespace: str) -> None:
    """min == max pins the HPA to a bound: status reports ScalingLimited at min or max."""
    ns = msvc_namespace
    kctl.apply(msvc("pinned", autoscaling={"minReplicas": 2, "maxReplicas": 2}), ns)
    obj = wait_until(
        "ScalingLimited=True on the ModelService",
        lambda: msvc_when(
            kctl, ns, "pinned", lambda o: condition(o, "ScalingLimited").get("status") == "True"
        ),
        timeout=90,
    )
    limited = condition(obj, "ScalingLimited")
    assert limited["reason"] in ("AtMaxReplicas", "AtMinReplicas")
    assert "minReplicas 2, maxReplicas 2" in limited["message"]
    assert wait_phase(kctl, ns, "pinned", "Ready")["status"]["replicaSummary"] == "2/2"


def test_autoscaling_removed_deletes_the_hpa(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("toggle", autoscaling={"minReplicas": 2, "maxReplicas": 4}), ns)
    wait_until("HPA created", lambda: kctl.maybe_get("hpa", "toggle", ns))
    wait_phase(kctl, ns, "toggle", "Ready")
    kctl.run(
        "patch",
        "msvc",
        "toggle",
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps(
            [
                {"op": "remove", "path": "/spec/autoscaling"},
                {"op": "add", "path": "/spec/replicas", "value": 1},
            ]
        ),
    )
    wait_until("stale HPA deleted", lambda: kctl.maybe_get("hpa", "toggle", ns) is None)
    wait_until(
        "Deployment back to fixed replicas=1",
        lambda: kctl.get("deployment", "toggle", ns)["spec"]["replicas"] == 1,
    )
    wait_until(
        "a HPARemoved event",
        lambda: any(e["reason"] == "HPARemoved" for e in kctl.events(ns, "toggle")),
    )


def test_drift_is_restored_within_seconds(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("drift", autoscaling={"minReplicas": 1, "maxReplicas": 3}), ns)
    wait_phase(kctl, ns, "drift", "Ready")

    svc_uid = kctl.get("service", "drift", ns)["metadata"]["uid"]
    kctl.run("delete", "service", "drift", "-n", ns)
    wait_until(
        "deleted Service re-created",
        lambda: (s := kctl.maybe_get("service", "drift", ns)) and s["metadata"]["uid"] != svc_uid,
        timeout=20,
    )

    kctl.run("delete", "hpa", "drift", "-n", ns)
    wait_until("deleted HPA re-created", lambda: kctl.maybe_get("hpa", "drift", ns), timeout=20)

    kctl.run(
        "patch", "hpa", "drift", "-n", ns, "--type=merge", "-p", '{"spec": {"maxReplicas": 10}}'
    )
    wait_until(
        "HPA maxReplicas restored to 3",
        lambda: kctl.get("hpa", "drift", ns)["spec"]["maxReplicas"] == 3,
        timeout=20,
    )

    kctl.run("set", "image", "deployment/drift", "runtime=evil:latest", "-n", ns)
    wait_until(
        "Deployment image restored",
        lambda: (
            kctl.get("deployment", "drift", ns)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == TEST_RUNTIME_IMAGE
        ),
        timeout=20,
    )

    dep_uid = kctl.get("deployment", "drift", ns)["metadata"]["uid"]
    kctl.run("delete", "deployment", "drift", "-n", ns)
    wait_until(
        "deleted Deployment re-created",
        lambda: (
            (d := kctl.maybe_get("deployment", "drift", ns)) and d["metadata"]["uid"] != dep_uid
        ),
        timeout=20,
    )
    wait_phase(kctl, ns, "drift", "Ready")
    wait_until(
        "a DriftRepaired event",
        lambda: any(e["reason"] == "DriftRepaired" for e in kctl.events(ns, "drift")),
    )

    # A label someone else adds (another field manager) is left alone: no fight.
    # kopf handles one object's events in order, so a drift made after the label and seen
    # repaired proves the operator has handled the label too (and applied over it).
    kctl.run("label", "deployment", "drift", "-n", ns, "team=ml")
    kctl.run("set", "image", "deployment/drift", "runtime=evil:again", "-n", ns)
    wait_until(
        "the image drift made after the label to be repaired",
        lambda: (
            kctl.get("deployment", "drift", ns)["spec"]["template"]["spec"]["containers"][0][
                "image"
            ]
            == TEST_RUNTIME_IMAGE
        ),
        timeout=20,
    )
    labels = kctl.get("deployment", "drift", ns)["metadata"]["labels"]
    assert labels.get("team") == "ml", labels
    assert labels["app.kubernetes.io/managed-by"] == "modelservice-operator", labels


def test_delete_garbage_collects_children(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("gone", autoscaling={"minReplicas": 1, "maxReplicas": 2}), ns)
    wait_phase(kctl, ns, "gone", "Ready")
    kctl.run("delete", "msvc", "gone", "-n", ns, "--timeout=60s", timeout=90)
    for kind in ("deployment", "service", "hpa", "pdb"):
        wait_until(
            f"{kind} gone garbage-collected",
            lambda kind=kind: kctl.maybe_get(kind, "gone", ns) is None,
            timeout=60,
        )
    wait_until("runtime pods gone", lambda: not pods(kctl, ns, "gone"), timeout=60)


# --- kubectl UX and operator metrics -----------------------------------------------------------


def test_kubectl_get_msvc_printer_columns_and_explain(kctl: Kubectl, msvc_namespace: str) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("cols", replicas=2), ns)
    wait_phase(kctl, ns, "cols", "Ready")
    out = kctl.run("get", "msvc", "-n", ns).stdout.splitlines()
    assert out[0].split() == ["NAME", "READY", "PHASE", "REPLICAS", "URL", "AGE"]
    row = out[1].split()
    assert row[:5] == ["cols", "True", "Ready", "2/2", f"http://cols.{ns}.svc.cluster.local"]
    explained = kctl.run("explain", "msvc.spec.autoscaling.minReplicas").stdout
    assert "Lowest replica count" in explained
    explained = kctl.run("explain", "modelservice.spec.gpu").stdout
    assert "resourceName" in explained and "GPUs per pod" in explained


def test_operator_exports_its_own_metrics(
    kctl: Kubectl, msvc_namespace: str, modelservice_operator: OperatorProcess
) -> None:
    kctl.apply(msvc("metered"), msvc_namespace)
    wait_phase(kctl, msvc_namespace, "metered", "Ready")
    text = modelservice_operator.metrics()
    assert 'modelservice_operator_reconciles_total{result="ok",trigger="create"}' in text
    assert "modelservice_operator_reconcile_duration_seconds_bucket" in text


def test_user_edits_to_fields_we_do_not_own_survive_reconcile(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("shared", replicas=1), ns)
    wait_phase(kctl, ns, "shared", "Ready")
    kctl.run("annotate", "service", "shared", "-n", ns, "example.com/owner=team-ml")
    body = copy.deepcopy(msvc("shared", replicas=2))
    kctl.apply(body, ns)
    wait_phase(kctl, ns, "shared", "Ready")
    assert kctl.get("deployment", "shared", ns)["spec"]["replicas"] == 2
    svc = kctl.get("service", "shared", ns)
    assert svc["metadata"]["annotations"]["example.com/owner"] == "team-ml"
