"""The Docker/kind path end to end: a kind cluster from kind-config.yaml, both images built and
loaded, `helm install` of the chart, examples/cpu-autoscaled.yaml applied (its model URI
pointed at the test CNN, served from a ConfigMap inside the cluster), Ready, and a real KServe V2
inference request through the model's Service (kubectl port-forward) whose answer matches
onnxruntime's in this process on the same (normalized) input.

Needs Docker and kind: skipped, saying which is missing, where they are not (the CI machines
refuse the privileged containers kind runs). helm and kubectl come from `make tools`.
`make e2e-kind` creates the cluster, builds, loads and deploys first; run alone, this test
does those steps itself (reusing a kind cluster that exists, building both images every time).
Env: KIND_CLUSTER (default modelservice), RUNTIME_IMAGE / OPERATOR_IMAGE (default
modelservice-runtime:dev / modelservice-operator:dev), KEEP_KIND_CLUSTER=1 to keep a cluster
this test created.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.needs import cannot_have, needed

pytestmark = [pytest.mark.kind, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelservice-operator"
EXAMPLE = ROOT / "examples" / "cpu-autoscaled.yaml"
CLUSTER = os.environ.get("KIND_CLUSTER", "modelservice")
RUNTIME_IMAGE = os.environ.get("RUNTIME_IMAGE", "modelservice-runtime:dev")
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "modelservice-operator:dev")
RELEASE, RELEASE_NS = "modelservice-operator", "modelservice-system"
WORKLOAD_NS = "modelservice-e2e"
MODEL_FILES = "e2e-model-files"  # in-cluster HTTP server of the test model


def _tool(name: str) -> str | None:
    built = ROOT / ".cache" / "bin" / name
    return str(built) if built.is_file() and os.access(built, os.X_OK) else shutil.which(name)


def _run(*cmd: str, timeout: float = 600, stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _requirements() -> dict[str, str]:
    """Paths of the tools, or skip naming the first one missing. Docker and kind are what CI
    machines cannot have (kind needs --privileged): a skip even in CI; the rest is needed."""
    tools = {name: _tool(name) for name in ("docker", "kind", "helm", "kubectl")}
    for name, path in tools.items():
        if path is None:
            missing = needed if name in ("helm", "kubectl") else cannot_have
            missing(
                f"`{name}` is not installed: the kind e2e test needs Docker, kind, helm and kubectl"
            )
    try:
        info = subprocess.run([tools["docker"], "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        cannot_have("`docker info` did not answer within 30s: no usable Docker engine")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        cannot_have(f"`docker info` failed, no Docker engine to run kind: {reason}")
    if not EXAMPLE.is_file():
        needed(f"{EXAMPLE.relative_to(ROOT)} does not exist yet")
    return {k: str(v) for k, v in tools.items()}


@dataclass
class Kind:
    tools: dict[str, str]
    kubeconfig: Path

    def kubectl(self, *args: str, timeout: float = 120, stdin: str | None = None) -> str:
        return _run(
            self.tools["kubectl"],
            "--kubeconfig",
            str(self.kubeconfig),
            *args,
            timeout=timeout,
            stdin=stdin,
        )

    def helm(self, *args: str) -> str:
        return _run(self.tools["helm"], "--kubeconfig", str(self.kubeconfig), *args)


@pytest.fixture(scope="module")
def kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    tools = _requirements()
    existing = _run(tools["kind"], "get", "clusters").split()
    created = CLUSTER not in existing
    if created:
        _run(
            tools["kind"],
            "create",
            "cluster",
            "--name",
            CLUSTER,
            "--config",
            str(ROOT / "kind-config.yaml"),
            "--wait",
            "180s",
        )
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    kubeconfig.write_text(_run(tools["kind"], "get", "kubeconfig", "--name", CLUSTER))
    try:
        # Always built: an image left from an older checkout under the same tag would test
        # stale code (docker's layer cache keeps a rebuild of unchanged sources quick).
        for image, dockerfile in (
            (RUNTIME_IMAGE, "runtime/Dockerfile"),
            (OPERATOR_IMAGE, "operator/Dockerfile"),
        ):
            _run(
                tools["docker"], "build", "-f", str(ROOT / dockerfile), "-t", image, str(ROOT),
                timeout=1800,
            )  # fmt: skip
        _run(
            tools["kind"], "load", "docker-image", "--name", CLUSTER, RUNTIME_IMAGE, OPERATOR_IMAGE
        )
        yield Kind(tools, kubeconfig)
    finally:
        if created and os.environ.get("KEEP_KIND_CLUSTER") != "1":
            subprocess.run(
                [tools["kind"], "delete", "cluster", "--name", CLUSTER],
                capture_output=True,
                timeout=300,
            )


@pytest.fixture(scope="module")
def operator(kind: Kind) -> Kind:
    """The chart installed (or upgraded) with the freshly loaded images."""
    repo, tag = OPERATOR_IMAGE.rsplit(":", 1)
    kind.helm(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        f"image.repository={repo}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=IfNotPresent",
        "--set",
        f"runtimeImage={RUNTIME_IMAGE}",
        "--wait",
        "--timeout",
        "300s",
    )
    return kind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kubectl port-forward exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"kubectl port-forward did not open 127.0.0.1:{port} within its deadline")


def v2_request(inputs: list[dict[str, Any]], x: np.ndarray) -> dict[str, Any]:
    """A V2 JSON request feeding `x` to the model's first input (as its metadata names it)."""
    first = inputs[0]
    return {
        "inputs": [
            {
                "name": first["name"],
                "shape": list(x.shape),
                "datatype": first["datatype"],
                "data": x.ravel().tolist(),
            }
        ]
    }


def example_input(shape: list[int], seed: int = 0) -> np.ndarray:
    """Values that are not all alike (zeros hide a model that ignores its input), batch 2
    where the batch axis is dynamic."""
    concrete = [2 if d < 0 else d for d in shape]
    return np.random.default_rng(seed).uniform(0, 1, concrete).astype(np.float32)


def expected_output(model: Path, x: np.ndarray, normalize: dict[str, list[float]] | None) -> Any:
    """What onnxruntime answers in this process for `x`, normalized per channel (axis 1) as
    the runtime does for spec.runtime.normalize: (x - mean) / std."""
    import onnxruntime as ort

    if normalize:
        axes = (1, -1) + (1,) * (x.ndim - 2)
        mean = np.asarray(normalize["mean"], np.float32).reshape(axes)
        std = np.asarray(normalize["std"], np.float32).reshape(axes)
        x = ((x - mean) / std).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _serve_model_in_cluster(kind: Kind, ns: str, model: Path) -> str:
    """Serve `model` inside the cluster over plain HTTP and return its URL.

    kind pods cannot reach the example's public model URL from a sandbox, and the model must
    match the request we send: a ConfigMap holds the small test CNN, and the runtime image's
    own Python serves it (restricted security context, like every pod here)."""
    configmap = kind.kubectl(
        "create",
        "configmap",
        MODEL_FILES,
        "-n",
        ns,
        f"--from-file=model.onnx={model}",
        "--dry-run=client",
        "-o",
        "yaml",
    )
    kind.kubectl("apply", "-f", "-", stdin=configmap)
    labels = {"app.kubernetes.io/name": MODEL_FILES}
    secure = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": MODEL_FILES, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "http",
                            "image": RUNTIME_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python",
                                "-m",
                                "http.server",
                                "8000",
                                "--directory",
                                "/data",
                            ],
                            "ports": [{"containerPort": 8000}],
                            "securityContext": secure,
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "data", "configMap": {"name": MODEL_FILES}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": MODEL_FILES, "namespace": ns},
        "spec": {"selector": labels, "ports": [{"port": 8000, "targetPort": 8000}]},
    }
    kind.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([deployment, service]))
    kind.kubectl(
        "rollout", "status", "-n", ns, f"deployment/{MODEL_FILES}", "--timeout=180s", timeout=200
    )
    return f"http://{MODEL_FILES}.{ns}.svc.cluster.local:8000/model.onnx"


def test_example_becomes_ready_and_answers_a_v2_request(operator: Kind, cnn_onnx: Path) -> None:
    """examples/cpu-autoscaled.yaml, with its model URI pointed at the test CNN served in the
    cluster, becomes Ready and answers a V2 inference through its Service."""
    import httpx

    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    name = manifest["metadata"]["name"]
    model = manifest["spec"].get("model", {}).get("name") or name
    ns = manifest["metadata"].get("namespace") or WORKLOAD_NS
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    operator.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(namespace))
    url = _serve_model_in_cluster(operator, ns, cnn_onnx)
    manifest["spec"]["model"]["uri"] = url
    manifest["spec"]["model"].pop("sha256", None)
    # kind has no custom-metrics adapter: keep the CPU target, drop the Pods metric.
    manifest["spec"].get("autoscaling", {}).pop("metrics", None)
    manifest["metadata"]["namespace"] = ns
    operator.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
    try:
        operator.kubectl(
            "wait",
            "-n",
            ns,
            f"modelservice/{name}",
            "--for=jsonpath={.status.phase}=Ready",
            "--timeout=600s",
            timeout=660,
        )
        port = _free_port()
        forward = subprocess.Popen(
            [
                operator.tools["kubectl"],
                "--kubeconfig",
                str(operator.kubeconfig),
                "-n",
                ns,
                "port-forward",
                f"svc/{name}",
                f"{port}:80",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_port(port, forward, time.monotonic() + 60)
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30) as client:
                assert client.get("/v2/health/ready").status_code == 200
                meta = client.get(f"/v2/models/{model}").json()
                x = example_input(meta["inputs"][0]["shape"])
                reply = client.post(f"/v2/models/{model}/infer", json=v2_request(meta["inputs"], x))
                assert reply.status_code == 200, reply.text
                (out,) = reply.json()["outputs"]
                want = expected_output(cnn_onnx, x, manifest["spec"]["runtime"].get("normalize"))
                assert (out["datatype"], out["shape"]) == ("FP32", list(want.shape)), out
                got = np.asarray(out["data"], np.float32).reshape(want.shape)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        finally:
            forward.terminate()
            forward.wait(timeout=10)
    finally:
        subprocess.run(
            [
                operator.tools["kubectl"],
                "--kubeconfig",
                str(operator.kubeconfig),
                "delete",
                "-n",
                ns,
                f"modelservice/{name}",
                f"deployment/{MODEL_FILES}",
                f"service/{MODEL_FILES}",
                f"configmap/{MODEL_FILES}",
                "--wait=true",
                "--timeout=120s",
            ],
            capture_output=True,
            timeout=180,
        )
