"""The operator works with exactly the RBAC in modelservice_operator.rbac, and nothing more.

A ServiceAccount bound to a ClusterRole of those rules gets a token (`kubectl create token`);
a second `modelservice operator` runs with a kubeconfig carrying only that token, watching
its own namespace glob, and must bring a ModelService to Ready, repair drift and remove a
stale HPA without a single Forbidden in its log. `kubectl auth can-i --as` checks that the
same identity cannot read Secrets, and can only list and watch Pods (their statuses say why
replicas are not ready), never get, create or exec into one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from modelservice_operator.rbac import cluster_role

from tests.integration.conftest import Kubectl, run_operator, wait_until
from tests.integration.nodes import on_fake_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RUN_ID = uuid.uuid4().hex[:6]
SA_NAMESPACE = f"msvc-rbac-{RUN_ID}-system"
WATCHED = f"msvc-rbac-{RUN_ID}-apps"
ROLE = f"modelservice-operator-it-{RUN_ID}"
SA = "modelservice-operator"
AS = f"system:serviceaccount:{SA_NAMESPACE}:{SA}"


def _token_kubeconfig(kctl: Kubectl, token: str, path: Path) -> Path:
    admin = json.loads(kctl.run("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin["clusters"][0]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": SA}}],
        "current-context": "operator",
    }))  # fmt: skip
    return path


@pytest.fixture
def operator_identity(kctl: Kubectl, modelservice_crd: str, tmp_path: Path) -> Iterator[Path]:
    for ns in (SA_NAMESPACE, WATCHED):
        kctl.run("create", "namespace", ns)
    try:
        kctl.run("create", "serviceaccount", SA, "-n", SA_NAMESPACE)
        kctl.apply(cluster_role(ROLE), "default")
        kctl.run("create", "clusterrolebinding", ROLE, f"--clusterrole={ROLE}",
                 f"--serviceaccount={SA_NAMESPACE}:{SA}")  # fmt: skip
        token = kctl.run("create", "token", SA, "-n", SA_NAMESPACE, "--duration=1h").stdout
        yield _token_kubeconfig(kctl, token.strip(), tmp_path / "operator.kubeconfig")
    finally:
        kctl.run("delete", "msvc", "--all", "-n", WATCHED, "--timeout=60s", check=False,
                 timeout=90)  # fmt: skip
        kctl.run("delete", "clusterrolebinding", ROLE, "--ignore-not-found", check=False)
        kctl.run("delete", "clusterrole", ROLE, "--ignore-not-found", check=False)
        for ns in (WATCHED, SA_NAMESPACE):
            kctl.run("delete", "namespace", ns, "--wait=false", check=False)


def _can(kctl: Kubectl, verb: str, resource: str) -> bool:
    proc = kctl.run("auth", "can-i", verb, resource, "-n", WATCHED, f"--as={AS}", check=False)
    return proc.stdout.strip() == "yes"


def test_operator_runs_with_least_privilege(
    kctl: Kubectl, operator_identity: Path, tmp_path: Path
) -> None:
    assert _can(kctl, "patch", "deployments.apps")
    assert _can(kctl, "delete", "horizontalpodautoscalers.autoscaling")
    # A removed canary's Deployment is deleted by the operator (its owner lives on).
    assert _can(kctl, "delete", "deployments.apps")
    assert _can(kctl, "patch", "modelservices.serving.modelservice.io/status")
    assert _can(kctl, "list", "pods") and _can(kctl, "watch", "pods")
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("create", "pods"),
                           ("delete", "pods"), ("get", "pods"),
                           ("create", "pods/exec"), ("get", "configmaps")]:  # fmt: skip
        assert not _can(kctl, verb, resource), f"operator identity may {verb} {resource}"

    with run_operator(operator_identity, f"msvc-rbac-{RUN_ID}-*", tmp_path / "op.log") as op:
        try:
            kctl.apply({
                "apiVersion": "serving.modelservice.io/v1alpha1",
                "kind": "ModelService",
                "metadata": {"name": "least"},
                "spec": on_fake_nodes({"model": {"uri": "https://h/m.onnx"},
                         "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}),
            }, WATCHED)  # fmt: skip

            def ready() -> bool:
                obj = kctl.get("msvc", "least", WATCHED)
                return (obj.get("status") or {}).get("phase") == "Ready"

            wait_until("ModelService Ready under the least-privilege identity", ready, timeout=90)
            kctl.run("delete", "service", "least", "-n", WATCHED)
            wait_until("Service restored", lambda: kctl.maybe_get("service", "least", WATCHED))
            kctl.run("patch", "msvc", "least", "-n", WATCHED, "--type=json", "-p",
                     '[{"op": "remove", "path": "/spec/autoscaling"}]')  # fmt: skip
            wait_until("stale HPA removed", lambda: kctl.maybe_get("hpa", "least", WATCHED) is None)
            log = op.log_path.read_text()
            assert "forbidden" not in log.lower(), op.log_tail(80)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log (tail) ---\n{op.log_tail(80)}") from e
