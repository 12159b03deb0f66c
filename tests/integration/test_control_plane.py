"""The local control plane itself (hack/cluster-up.sh) behaves like a real cluster.

These checks guard what the operator and autoscaling tests rely on: the scheduler honours
GPU requests and taints, kwok turns bound pods Running/Ready, the controller-manager runs
Deployments and garbage collection, and metrics-server serves kwok's simulated pod CPU.
Everything goes through kubectl against the real apiserver; each test uses its own namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import on_fake_nodes
from tests.needs import needed
from tests.waiting import wait_until

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KUBECONFIG = REPO_ROOT / ".cache" / "cluster" / "kubeconfig"
CPU_NODES = {"kwok-cpu-0", "kwok-cpu-1"}
GPU_NODE = "kwok-gpu-0"
# Pod annotation read by hack/kwok/resource-usage.yaml (simulated usage per container).
SIMULATED_CPU = "modelservice.dev/simulated-cpu"
# kwok never pulls images; any name works, a non-resolvable one proves nothing is pulled.
IMAGE = "registry.invalid/modelservice/placeholder:1"


def _kubectl_path() -> str:
    found = shutil.which("kubectl")
    local = REPO_ROOT / ".cache" / "bin" / "kubectl"
    return str(local) if local.exists() else (found or "kubectl")


class Kubectl:
    """Thin kubectl runner bound to one kubeconfig (errors carry kubectl's stderr)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.binary = _kubectl_path()

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", str(self.kubeconfig), "--request-timeout=20s", *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict[str, Any], namespace: str) -> None:
        self.run("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self.run("get", kind, name, "-n", namespace, "-o", "json").stdout)

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", "pods", "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args).stdout)["items"]


@pytest.fixture(scope="module")
def kubectl() -> Kubectl:
    kubeconfig = Path(os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG)
    if not kubeconfig.is_file():
        needed(f"no local control plane: {kubeconfig} is absent (run `make cluster-up`)")
    k = Kubectl(kubeconfig)
    try:
        ready = k.run("get", "--raw", "/readyz", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        needed(f"no local control plane: kubectl could not run ({exc})")
    if ready.returncode != 0:
        needed(f"control plane in {kubeconfig} is unreachable: {ready.stderr.strip()}")
    return k


@pytest.fixture()
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"cp-test-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def _running_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return pod.get("status", {}).get("phase") == "Running" and conditions.get("Ready") == "True"


def _pod(
    name: str,
    *,
    gpu: int = 0,
    tolerate_gpu: bool = False,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": IMAGE,
        "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}},
    }
    if gpu:
        container["resources"]["limits"] = {"nvidia.com/gpu": str(gpu)}
    spec: dict[str, Any] = {"containers": [container]}
    if tolerate_gpu:
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    on_fake_nodes(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def test_deployment_pods_run_on_cpu_nodes(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": on_fake_nodes({"containers": [{"name": "main", "image": IMAGE}]}),
                },
            },
        },
        namespace,
    )

    def two_ready() -> list[dict[str, Any]] | None:
        pods = [p for p in kubectl.pods(namespace, "app=web") if _running_ready(p)]
        return pods if len(pods) == 2 else None

    pods = wait_until("2 Running and Ready pods of Deployment web", two_ready, timeout=90)
    assert {p["spec"]["nodeName"] for p in pods} <= CPU_NODES
    deployment = kubectl.get("deployment", "web", namespace)
    wait_until(
        "Deployment web to report 2 ready replicas",
        lambda: kubectl.get("deployment", "web", namespace)["status"].get("readyReplicas") == 2,
        timeout=90,
    )
    assert deployment["spec"]["replicas"] == 2


def test_gpu_pods_need_the_toleration(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(_pod("gpu-tolerated", gpu=1, tolerate_gpu=True), namespace)
    kubectl.apply(_pod("gpu-untolerated", gpu=1), namespace)

    pod = wait_until(
        "pod gpu-tolerated to be Running and Ready",
        lambda: (p := kubectl.get("pod", "gpu-tolerated", namespace)) and _running_ready(p) and p,
        timeout=90,
    )
    assert pod["spec"]["nodeName"] == GPU_NODE

    def unschedulable() -> dict[str, Any] | None:
        p = kubectl.get("pod", "gpu-untolerated", namespace)
        for c in p.get("status", {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                return c
        return None

    condition = wait_until(
        "pod gpu-untolerated to be marked Unschedulable", unschedulable, timeout=90
    )
    assert "nvidia.com/gpu" in condition.get("message", ""), condition
    pod = kubectl.get("pod", "gpu-untolerated", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_garbage_collection_deletes_owned_objects(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace
    )
    owner = kubectl.get("configmap", "owner", namespace)
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                    }
                ],
            },
        },
        namespace,
    )
    kubectl.run("delete", "configmap", "owner", "-n", namespace)

    def child_gone() -> bool:
        proc = kubectl.run("get", "configmap", "child", "-n", namespace, check=False)
        return proc.returncode != 0 and "NotFound" in proc.stderr

    wait_until("the garbage collector to delete configmap child", child_gone, timeout=60)


def _cpu_millicores(quantity: str) -> float:
    """metrics.k8s.io reports CPU as e.g. '500m', '499873291n' or '1'."""
    units = {"n": 1e-6, "u": 1e-3, "m": 1.0}
    if quantity[-1] in units:
        return float(quantity[:-1]) * units[quantity[-1]]
    return float(quantity) * 1000


def _require_metrics_api(kubectl: Kubectl) -> None:
    """Skip unless metrics-server answers behind the v1beta1.metrics.k8s.io APIService."""
    proc = kubectl.run("get", "apiservice", "v1beta1.metrics.k8s.io", "-o", "json", check=False)
    if proc.returncode != 0:
        needed("metrics.k8s.io is not registered in this control plane")
    conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
    if not any(c["type"] == "Available" and c["status"] == "True" for c in conditions):
        needed("metrics.k8s.io is registered but not Available (metrics-server down)")


def test_metrics_server_reports_simulated_pod_cpu(kubectl: Kubectl, namespace: str) -> None:
    _require_metrics_api(kubectl)
    kubectl.apply(_pod("busy", annotations={SIMULATED_CPU: "750m"}), namespace)
    wait_until(
        "pod busy to be Running and Ready",
        lambda: _running_ready(kubectl.get("pod", "busy", namespace)),
        timeout=90,
    )
    path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/busy"

    def cpu() -> float | None:
        proc = kubectl.run("get", "--raw", path, check=False)
        if proc.returncode != 0:
            return None
        containers = json.loads(proc.stdout).get("containers", [])
        return sum(_cpu_millicores(c["usage"]["cpu"]) for c in containers) or None

    def near(target: float) -> Callable[[], float | None]:
        return lambda: (v := cpu()) is not None and abs(v - target) < target * 0.1 and v

    wait_until("metrics.k8s.io to report ~750m CPU for pod busy", near(750), timeout=120)
    kubectl.run("annotate", "pod", "busy", "-n", namespace, "--overwrite", f"{SIMULATED_CPU}=200m")
    wait_until("metrics.k8s.io to follow the annotation to ~200m CPU", near(200), timeout=120)


@pytest.mark.slow
def test_hpa_scales_on_simulated_cpu(kubectl: Kubectl, namespace: str) -> None:
    """The controller-manager's HPA loop sees kwok's simulated CPU through metrics-server."""
    _require_metrics_api(kubectl)
    kubectl.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "busy"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "busy"}},
                "template": {
                    "metadata": {"labels": {"app": "busy"}, "annotations": {SIMULATED_CPU: "750m"}},
                    "spec": on_fake_nodes(
                        {
                            "containers": [
                                {
                                    "name": "main",
                                    "image": IMAGE,
                                    "resources": {"requests": {"cpu": "500m"}},
                                }
                            ]
                        }
                    ),
                },
            },
        },
        namespace,
    )
    kubectl.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "busy"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
                "minReplicas": 1,
                "maxReplicas": 4,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 50},
                        },
                    }
                ],
            },
        },
        namespace,
    )

    def replicas(want: int) -> Callable[[], bool]:
        def probe() -> bool:
            status = kubectl.get("hpa", "busy", namespace).get("status", {})
            return status.get("currentReplicas") == want and status.get("desiredReplicas") == want

        return probe

    # 750m used / 500m requested = 150% against a 50% target: ceil(1 * 150 / 50) = 3 replicas.
    wait_until("the HPA to scale Deployment busy to 3 replicas", replicas(3), timeout=150)
    kubectl.run(
        "annotate", "pods", "-n", namespace, "-l", "app=busy", "--overwrite", f"{SIMULATED_CPU}=50m"
    )
    # 10% against 50%: back to minReplicas after the 15s downscale stabilization window.
    wait_until("the HPA to scale Deployment busy back to 1 replica", replicas(1), timeout=150)
