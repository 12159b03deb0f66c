"""Security of what the operator creates, against the real API server (issue 6).

- Pod Security Admission: runtime pods are admitted in a namespace that enforces the
  `restricted` profile (the real apiserver enforces it; a root pod is refused there).
- The runtime's bearer token comes from a Secret through `secretKeyRef`; its value never
  appears in the Deployment, ReplicaSets, pods, the ModelService (status), events or the
  operator's log. (RBAC `kubectl auth can-i` checks live in test_helm.py /
  test_operator_rbac.py.)
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.integration.conftest import Kubectl, OperatorProcess, msvc, wait_phase, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PSA_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
ROOT_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "root-pod"},
    "spec": {"containers": [{"name": "c", "image": "registry.invalid/busybox"}]},
}


def test_runtime_pods_admitted_under_restricted_psa_and_token_never_leaks(
    kctl: Kubectl, msvc_namespace: str, modelservice_operator: OperatorProcess
) -> None:
    ns, name = msvc_namespace, "locked"
    kctl.run("label", "namespace", ns, *(f"{k}={v}" for k, v in PSA_LABELS.items()))
    # The namespace really enforces: a pod with no security context is refused.
    refused = kctl.apply(ROOT_POD, ns, check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr

    token = f"tok-{uuid.uuid4().hex}"
    kctl.run("create", "secret", "generic", "runtime-auth", "-n", ns, f"--from-literal=api={token}")
    kctl.run("create", "secret", "generic", "fetch-creds", "-n", ns,
             f"--from-literal=MODELSERVICE_FETCH_TOKEN={token}-fetch")  # fmt: skip
    body = msvc(
        name,
        replicas=2,
        runtime={"auth": {"secretRef": {"name": "runtime-auth", "key": "api"}}},
    )
    body["spec"]["model"]["secretRef"] = {"name": "fetch-creds"}
    kctl.apply(body, ns)
    obj = wait_phase(kctl, ns, name, "Ready", timeout=120)
    assert obj["status"]["readyReplicas"] == 2

    # Admitted: the ReplicaSet created its pods (no FailedCreate from PodSecurity).
    (rs,) = kctl.list("replicasets", ns, f"app.kubernetes.io/instance={name}")
    failed = [
        e["message"]
        for e in kctl.list("events", ns)
        if e["involvedObject"]["kind"] == "ReplicaSet" and e["reason"] == "FailedCreate"
    ]
    assert failed == []
    pods = kctl.list("pods", ns, f"app.kubernetes.io/instance={name}")
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    assert rs["status"].get("readyReplicas") == 2

    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert not any("serviceAccountToken" in json.dumps(v) for v in spec.get("volumes", []))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert not sc.get("privileged"), c["name"]

    # The token reaches the runtime only by reference.
    dep = kctl.get("deployment", name, ns)
    pod_spec = dep["spec"]["template"]["spec"]
    (runtime,) = pod_spec["containers"]
    (auth_env,) = [e for e in runtime["env"] if e["name"] == "MODELSERVICE_AUTH_TOKEN"]
    assert auth_env == {
        "name": "MODELSERVICE_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "runtime-auth", "key": "api"}},
    }
    (fetch,) = pod_spec["initContainers"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "fetch-creds"}}]
    assert "envFrom" not in runtime  # fetch credentials stay with the init container

    # Trigger one more reconcile so the log and events have had every chance to leak.
    kctl.run("patch", "msvc", name, "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":1}}')
    wait_phase(kctl, ns, name, "Ready", timeout=90)
    wait_until(
        "an Applied event for the second generation",
        lambda: sum(e["reason"] == "Applied" for e in kctl.events(ns, name)) >= 1,
    )
    everything = {
        "ModelService": kctl.run("get", "msvc", name, "-n", ns, "-o", "json").stdout,
        "Deployment": json.dumps(dep),
        "ReplicaSets": kctl.run("get", "rs", "-n", ns, "-o", "json").stdout,
        "Pods": kctl.run("get", "pods", "-n", ns, "-o", "json").stdout,
        "Events": kctl.run("get", "events", "-n", ns, "-o", "json").stdout,
        "describe msvc": kctl.run("describe", "msvc", name, "-n", ns).stdout,
        "operator log": modelservice_operator.log_path.read_text(errors="replace"),
    }
    leaks = [where for where, text in everything.items() if token in text]
    assert leaks == [], f"the token appears in {leaks}"
