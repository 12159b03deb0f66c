"""Real pods on the real node (hack/node-up.sh): the whole chain from `kubectl apply` to an
answer, with the images `make images` built.

The operator runs as a pod from the Helm chart (its image, its ServiceAccount, in-cluster
config), watching this module's namespace only. Each ModelService's `model-fetch` init
container really fetches (HTTP from a server on the node's address, a PVC on the node, S3
from moto's standalone server on the node's address), the runtime container really loads the
model, and unmodified tritonclient calls go through the Service's ClusterIP (kube-proxy).

Without a real node (not Linux, not root, `make images` not run) every test here is skipped
with the reason, and with CI=true it fails instead: CI never passes without them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.cluster_env import gateway_facts
from tests.integration.conftest import REPO_ROOT, Kubectl, condition, wait_until
from tests.integration.processes import stop
from tests.needs import needed

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.slow]

REAL_NODE_FILE = REPO_ROOT / ".cache" / "cluster" / "real-node"
NODE_SOCKET = "/run/modelservice-node/containerd.sock"
RUNTIME_IMAGE = os.environ.get("RUNTIME_IMAGE", "modelservice-runtime:dev")
OPERATOR_IMAGE = os.environ.get("OPERATOR_IMAGE", "modelservice-operator:dev")
CHART = REPO_ROOT / "charts" / "modelservice-operator"
SUFFIX = uuid.uuid4().hex[:6]
NAMESPACE = f"msvc-real-{SUFFIX}"
OPERATOR_NAMESPACE = f"msvc-real-op-{SUFFIX}"
# Small requests: a rollout's surge pods and the HPA test's second replica must fit beside
# the operator on a 2-core node.
RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}
ROWS = 4
# The Gateway hack/gateway-up.sh runs on the real node (Traefik): the chart's default here.
GATEWAY = gateway_facts()


def _unavailable(reason: str) -> None:
    needed(f"no real node: {reason}")


def _image_on_node(image: str) -> bool:
    name = image if "/" in image else f"docker.io/library/{image}"
    proc = subprocess.run(
        ["ctr", "--address", NODE_SOCKET, "-n", "k8s.io", "images", "ls", "-q", f"name=={name}"],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0 and name in proc.stdout.split()


def real_node_ip(kctl: Kubectl) -> tuple[str | None, str]:
    """(the real node's address, "") once it is Ready and holds both images, else
    (None, why not)."""
    if not REAL_NODE_FILE.exists():
        return None, f"{REAL_NODE_FILE} is missing: the cluster was not started by cluster-up"
    facts = dict(
        line.split("=", 1) for line in REAL_NODE_FILE.read_text().splitlines() if "=" in line
    )
    if facts.get("REAL_NODE") != "yes":
        return None, facts.get("REAL_NODE_REASON") or "hack/cluster-up.sh started none"
    nodes = kctl.list("nodes", "default", selector="type=real")
    if not nodes:
        return None, "no node labelled type=real is registered"
    node = nodes[0]
    if condition(node, "Ready").get("status") != "True":
        return None, f"node {node['metadata']['name']} is not Ready"
    for image in (RUNTIME_IMAGE, OPERATOR_IMAGE):
        if not _image_on_node(image):
            return None, f"{image} is not in the node's containerd: run `make images`"
    ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    return ip, ""


@pytest.fixture(scope="module")
def node_ip(kctl: Kubectl) -> str:
    ip, why_not = real_node_ip(kctl)
    if ip is None:
        _unavailable(why_not)
    assert ip is not None
    return ip


@contextlib.contextmanager
def operator_from_chart(
    kctl: Kubectl,
    *,
    namespace: str = NAMESPACE,
    operator_namespace: str = OPERATOR_NAMESPACE,
    release: str = f"msvc-real-{SUFFIX}",
    activator: bool = False,
    gateway: bool = True,
) -> Iterator[str]:
    """The chart's operator pod (the real image) watching `namespace`, routing through the
    Gateway hack/gateway-up.sh runs (unless `gateway` is False: no default Gateway), with the
    activator (scale to zero) when asked; yields the operator's pod name. The CRD must be
    installed."""
    kctl.run("create", "namespace", namespace)
    helm = str(REPO_ROOT / ".cache" / "bin" / "helm")
    repo, tag = OPERATOR_IMAGE.rsplit(":", 1)
    cmd = [
        helm, "--kubeconfig", str(kctl.kubeconfig), "install", release, str(CHART),
        "-n", operator_namespace, "--create-namespace", "--wait", "--timeout", "180s",
        "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
        "--set", f"runtimeImage={RUNTIME_IMAGE}",
        "--set-json", f"watchNamespaces={json.dumps([namespace])}",
        # Its own peering object: the session's other operators never see it as a peer.
        "--set", f"peering.name={release}",
        "--set", f"activator.enabled={str(activator).lower()}",
    ]  # fmt: skip
    if gateway:  # every ModelService here gets an HTTPRoute on hack/gateway-up.sh's Gateway
        cmd += ["--set", f"gateway.default={GATEWAY.namespace}/{GATEWAY.name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    try:
        if proc.returncode != 0:
            pods = kctl.run("get", "pods", "-n", operator_namespace, "-o", "wide", check=False)
            pytest.fail(f"helm install failed: {proc.stderr}\n{pods.stdout}")
        (pod,) = kctl.list(
            "pods", operator_namespace, selector="app.kubernetes.io/name=modelservice-operator"
        )
        yield pod["metadata"]["name"]
    finally:
        kctl.run("delete", "msvc", "--all", "-n", namespace, "--wait=true", "--timeout=90s",
                 check=False, timeout=120)  # fmt: skip
        subprocess.run(
            [helm, "--kubeconfig", str(kctl.kubeconfig), "uninstall", release,
             "-n", operator_namespace, "--wait", "--timeout", "60s"],
            capture_output=True, timeout=90,
        )  # fmt: skip
        for ns in (namespace, operator_namespace):
            kctl.run("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def chart_operator(kctl: Kubectl, node_ip: str, modelservice_crd: str) -> Iterator[str]:
    with operator_from_chart(kctl) as pod:
        yield pod


@dataclass
class ModelFiles:
    """Files served over HTTP from the node's address (the pods' model server)."""

    root: Path
    base_url: str
    sha256: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_model_files(node_ip: str, mlp_onnx: Path, root: Path) -> Iterator[ModelFiles]:
    """mlp.onnx and a corrupt file, over HTTP from the node's address, out of `root`."""
    shutil.copy(mlp_onnx, root / "mlp.onnx")
    # Bytes that are no ONNX model, with a correct checksum: the fetch passes, the load fails.
    (root / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((node_ip, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = ModelFiles(root, f"http://{node_ip}:{server.server_address[1]}")
    for f in root.iterdir():
        files.sha256[f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    try:
        yield files
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def model_files(
    node_ip: str, mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelFiles]:
    with serve_model_files(node_ip, mlp_onnx, tmp_path_factory.mktemp("node-models")) as files:
        yield files


def manifest(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": {"model": model, "replicas": 1, "resources": RESOURCES, **spec},
    }


def pods_of(kctl: Kubectl, name: str) -> list[dict[str, Any]]:
    return kctl.list("pods", NAMESPACE, selector=f"app.kubernetes.io/instance={name}")


def live_pods_of(kctl: Kubectl, name: str) -> list[dict[str, Any]]:
    """The pods not being deleted: a rollout's old pods drain for a while after it ends."""
    return [p for p in pods_of(kctl, name) if not p["metadata"].get("deletionTimestamp")]


def describe(kctl: Kubectl, name: str) -> str:
    """What a failed wait shows: the ModelService's status and its pods' states."""
    obj = kctl.maybe_get("msvc", name, NAMESPACE) or {}
    lines = [json.dumps(obj.get("status"), indent=1)]
    for pod in pods_of(kctl, name):
        statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get(
            "containerStatuses", []
        )
        lines.append(f"pod {pod['metadata']['name']}: {pod['status'].get('phase')}")
        lines += [f"  {s['name']}: {json.dumps(s.get('state'))}" for s in statuses]
    return "\n".join(lines)


def wait_ready(kctl: Kubectl, name: str, timeout: float = 180) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, NAMESPACE)
        st = obj.get("status") or {}
        current = st.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and st.get("phase") == "Ready" else None

    try:
        return wait_until(f"ModelService {name} to be Ready", ready, timeout=timeout, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kctl, name)}") from None


def service_address(kctl: Kubectl, name: str) -> str:
    """The Service's ClusterIP:port, once it takes connections. A ModelService turns Ready
    with its pods; the EndpointSlice and kube-proxy's rules follow a moment later, and until
    then kube-proxy rejects connections to a Service without endpoints (seen once in CI:
    "connection refused" right after Ready, on a loaded machine)."""
    svc = kctl.get("service", name, NAMESPACE)
    ip, port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]

    def accepts() -> bool:
        try:
            socket.create_connection((ip, port), timeout=2).close()
            return True
        except OSError:
            return False

    wait_until(f"the Service {name} ({ip}:{port}) to take connections", accepts, timeout=30)
    return f"{ip}:{port}"


def hostpath_claim(
    kctl: Kubectl, stack: contextlib.ExitStack, pv_dir: Path, pv: str, claim: str
) -> None:
    """A ReadOnlyMany claim `claim` bound by name to a hostPath PersistentVolume `pv` on
    `pv_dir` (no provisioner here); the volume goes when `stack` closes."""
    kctl.run("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                 "hostPath": {"path": str(pv_dir), "type": "Directory"},
                 "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain"},
    }))  # fmt: skip
    stack.callback(kctl.run, "delete", "pv", pv, "--wait=false", check=False)
    kctl.apply({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}},
    }, NAMESPACE)  # fmt: skip


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def assert_loaded_before_ready(kctl: Kubectl, name: str) -> None:
    """The runtime's 'model ... is ready' log line comes before the pod turned Ready."""
    (pod,) = [p for p in pods_of(kctl, name) if condition(p, "Ready").get("status") == "True"]
    ready_at = _parse_time(condition(pod, "Ready")["lastTransitionTime"])
    logs = kctl.run("logs", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "runtime",
                    "--timestamps").stdout  # fmt: skip
    loaded = [ln for ln in logs.splitlines() if f"model {name} is ready" in ln]
    assert loaded, f"no load line in the runtime's log:\n{logs[-2000:]}"
    loaded_at = _parse_time(loaded[0].split()[0])
    # The log stamp has nanoseconds, the condition whole seconds (rounded down).
    assert loaded_at.replace(microsecond=0) <= ready_at, (loaded_at, ready_at)


def assert_answers_like_onnxruntime(address: str, model_name: str, model: Path) -> None:
    import onnxruntime as ort
    import tritonclient.http as httpclient

    x = np.random.default_rng(7).standard_normal((ROWS, 64)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )
    client = httpclient.InferenceServerClient(address, connection_timeout=10, network_timeout=30)
    try:
        assert client.is_server_ready() and client.is_model_ready(model_name)
        for binary in (False, True):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = httpclient.InferRequestedOutput("output", binary_data=binary)
            got = client.infer(model_name, [inp], outputs=[out]).as_numpy("output")
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        client.close()


# --- the chart's operator -------------------------------------------------------------------


def test_chart_operator_pod_runs_on_the_real_node(kctl: Kubectl, chart_operator: str) -> None:
    pod = kctl.get("pod", chart_operator, OPERATOR_NAMESPACE)
    assert condition(pod, "Ready").get("status") == "True"
    assert (
        pod["spec"]["nodeName"] == kctl.list("nodes", "default", "type=real")[0]["metadata"]["name"]
    )
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 0, status
    assert status["image"].endswith(OPERATOR_IMAGE)
    # In-cluster config against the apiserver through the kubernetes Service, as its
    # ServiceAccount: the log shows kopf watching, with no credential or TLS errors.
    logs = kctl.run("logs", chart_operator, "-n", OPERATOR_NAMESPACE).stdout
    for bad in ("Traceback", "CertificateError", "Unauthorized", "Forbidden"):
        assert bad not in logs, logs[-3000:]


# --- one ModelService per URI scheme ----------------------------------------------------------


@contextlib.contextmanager
def s3_server(node_ip: str, tmp: Path) -> Iterator[str]:
    """moto's standalone S3 server on the node's address; yields its endpoint URL."""
    from tests.integration.processes import free_port

    port = free_port()
    log = (tmp / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", node_ip, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://{node_ip}:{port}"
    try:

        def up() -> bool:
            try:
                conn = http.client.HTTPConnection(node_ip, port, timeout=2)
                conn.request("GET", "/")
                return conn.getresponse().status < 500
            except OSError:
                return proc.poll() is not None

        wait_until(f"moto's S3 server on {endpoint}", up, timeout=60)
        assert proc.poll() is None, (tmp / "moto.log").read_text()
        yield endpoint
    finally:
        stop(proc)
        log.close()


S3_CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


@pytest.mark.parametrize("scheme", ["http", "pvc", "s3"])
def test_a_model_from_each_scheme_serves_through_the_service(
    kctl: Kubectl,
    chart_operator: str,
    model_files: ModelFiles,
    node_ip: str,
    mlp_onnx: Path,
    scheme: str,
    tmp_path: Path,
) -> None:
    name = f"from-{scheme}"
    sha = model_files.sha256["mlp.onnx"]
    with contextlib.ExitStack() as stack:
        if scheme == "http":
            model = {"uri": model_files.url("mlp.onnx"), "sha256": sha, "name": name}
        elif scheme == "pvc":
            # A hostPath volume on the node, bound to a claim by name (no provisioner here).
            pv_dir = node_dir("pv")
            shutil.copy(mlp_onnx, pv_dir / "mlp.onnx")
            (pv_dir / "mlp.onnx").chmod(0o644)
            stack.callback(shutil.rmtree, pv_dir, True)
            hostpath_claim(kctl, stack, pv_dir, f"msvc-real-{SUFFIX}", "models")
            model = {"uri": "pvc://models/mlp.onnx", "sha256": sha, "name": name}
        else:
            import boto3

            endpoint = stack.enter_context(s3_server(node_ip, tmp_path))
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=S3_CREDS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=S3_CREDS["AWS_SECRET_ACCESS_KEY"],
                region_name=S3_CREDS["AWS_DEFAULT_REGION"],
            )
            s3.create_bucket(Bucket="models")
            s3.upload_file(str(mlp_onnx), "models", "mlp/model.onnx")
            kctl.apply({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
                "stringData": {**S3_CREDS, "AWS_ENDPOINT_URL": endpoint},
            }, NAMESPACE)  # fmt: skip
            model = {"uri": "s3://models/mlp/model.onnx", "sha256": sha, "name": name,
                     "secretRef": {"name": "s3-creds"}}  # fmt: skip
        kctl.apply(manifest(name, model), NAMESPACE)
        try:
            wait_ready(kctl, name)
            assert_loaded_before_ready(kctl, name)
            assert_answers_like_onnxruntime(service_address(kctl, name), name, mlp_onnx)
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


def test_grpc_answers_through_the_services_grpc_port(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles, mlp_onnx: Path, tmp_path: Path
) -> None:
    """The Service's second port `grpc` (h2c) reaches the runtime's gRPC front end:
    unmodified tritonclient.grpc and KServe's InferenceGRPCClient through the ClusterIP,
    answers equal to onnxruntime, and the grpc.health.v1 check a Kubernetes grpc probe would
    make says SERVING."""
    import grpc
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.integration.kserve_client import run_kserve_client

    name = "over-grpc"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"],
             "name": name}  # fmt: skip
    kctl.apply(manifest(name, model), NAMESPACE)
    try:
        wait_ready(kctl, name)
        svc = kctl.get("service", name, NAMESPACE)
        (port,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert port["appProtocol"] == "kubernetes.io/h2c"
        address = f"{svc['spec']['clusterIP']}:{port['port']}"
        x = np.random.default_rng(8).standard_normal((ROWS, 64)).astype(np.float32)
        session = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
        (expected,) = session.run(None, {"input": x})
        client = grpcclient.InferenceServerClient(address)
        try:
            assert client.is_server_ready() and client.is_model_ready(name)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer(name, [inp]).as_numpy("output")
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        finally:
            client.close()
        with grpc.insecure_channel(address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        # KServe's InferenceGRPCClient (from its own venv) through the same port.
        out = run_kserve_client(tmp_path, address, name, x)
        assert out["live"] and out["ready"] and out["model_ready"]
        for form in ("raw", "typed"):
            np.testing.assert_allclose(
                np.array(out[form][1], np.float32), expected, rtol=1e-5, atol=1e-6
            )
        assert out["unknown"][0] == "NOT_FOUND"
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- failures are reported ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "reason", "needle"),
    [
        ("sha256-mismatch", "ModelFetchFailed", "sha256"),
        ("unreachable", "ModelFetchFailed", "refused"),
        ("corrupt-model", "ModelFetchFailed", "onnx"),
    ],
)
def test_a_broken_model_leaves_the_pod_not_ready_and_says_why(
    kctl: Kubectl,
    chart_operator: str,
    model_files: ModelFiles,
    node_ip: str,
    case: str,
    reason: str,
    needle: str,
) -> None:
    good = model_files.sha256["mlp.onnx"]
    model = {
        "sha256-mismatch": {"uri": model_files.url("mlp.onnx"), "sha256": "0" * 64},
        # Port 1 on the node's address: nothing listens, the connection is refused.
        "unreachable": {"uri": f"http://{node_ip}:1/mlp.onnx", "sha256": good},
        "corrupt-model": {
            "uri": model_files.url("corrupt.onnx"),
            "sha256": model_files.sha256["corrupt.onnx"],
        },
    }[case]
    name = f"broken-{case}"
    kctl.apply(manifest(name, model), NAMESPACE)
    try:

        def reported() -> dict[str, Any] | None:
            ready = condition(kctl.get("msvc", name, NAMESPACE), "Ready")
            return ready if ready.get("reason") == reason else None

        try:
            ready = wait_until(f"{name}: Ready reason {reason}", reported, timeout=180)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(kctl, name)}") from None
        assert ready["status"] == "False"
        assert needle in ready["message"].lower(), ready["message"]
        obj = kctl.get("msvc", name, NAMESPACE)
        assert obj["status"]["phase"] == "Failed", obj["status"]
        assert all(condition(p, "Ready").get("status") != "True" for p in pods_of(kctl, name))
        wait_until(
            f"a Warning event {reason} on ModelService {name}",
            lambda: [
                e for e in kctl.events(NAMESPACE, name)
                if e["type"] == "Warning" and e["reason"] == reason
            ],
        )  # fmt: skip
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- under load -----------------------------------------------------------------------------


@dataclass
class Load:
    """Clients sending V2 JSON requests through the Service without pause, each on a new
    connection (so kube-proxy picks an endpoint for every one); counts sent and failed."""

    address: str
    model: str
    clients: int = 4
    host: str | None = None  # a Host header: through a Gateway, the route's
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self, body: bytes) -> None:
        host, port = self.address.rsplit(":", 1)
        ok, err = False, ""
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            headers = {"Content-Type": "application/json"}
            if self.host:
                headers["Host"] = self.host
            conn.request("POST", f"/v2/models/{self.model}/infer", body, headers)
            resp = conn.getresponse()
            data = resp.read()
            ok = resp.status == 200 and b'"outputs"' in data
            err = f"HTTP {resp.status}: {data[:200]!r}"
            conn.close()
        except OSError as e:
            err = repr(e)
        with self._lock:
            self.sent += 1
            if not ok:
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(err)

    def _run(self) -> None:
        x = np.random.default_rng(1).standard_normal(64).astype(np.float32).tolist()
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                       "data": x}]}).encode()  # fmt: skip
        while not self._stop.is_set():
            self._one(body)

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in threads:
                t.join(timeout=15)

    def report(self, what: str) -> str:
        return f"{what}: {self.sent} requests sent, {self.failed} failed {self.errors}"


def wait_rolled_out(kctl: Kubectl, name: str, timeout: float = 180) -> None:
    def done() -> bool:
        dep = kctl.get("deployment", name, NAMESPACE)
        st, want = dep.get("status") or {}, dep["spec"]["replicas"]
        live = live_pods_of(kctl, name)
        return (
            st.get("observedGeneration") == dep["metadata"]["generation"]
            and st.get("updatedReplicas") == want
            and st.get("readyReplicas") == want
            and st.get("replicas") == want
            and len(live) == want
        )

    wait_until(f"Deployment {name} to finish its rollout", done, timeout=timeout, interval=1)


def test_rollout_and_pod_deletion_under_load_lose_no_request(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles
) -> None:
    name = "under-load"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(manifest(name, model, replicas=2), NAMESPACE)
    try:
        wait_ready(kctl, name)
        address = service_address(kctl, name)

        # A batching change: new pods roll in while the old ones drain.
        with Load(address, name).running() as load:
            wait_until("requests to flow", lambda: load.sent >= 50, timeout=30)
            body = manifest(
                name,
                model,
                replicas=2,
                runtime={"batching": {"maxBatchSize": 8, "maxDelayMicroseconds": 200}},
            )
            kctl.apply(body, NAMESPACE)  # fmt: skip
            wait_rolled_out(kctl, name)
            wait_ready(kctl, name)
            sent_at_end = load.sent
            wait_until("requests after the rollout", lambda: load.sent >= sent_at_end + 50, 30)
        print(load.report("rollout"))
        assert load.failed == 0, load.report("rollout")

        # One pod deleted (gracefully, as a node drain would): its replacement serves.
        with Load(address, name).running() as load:
            wait_until("requests to flow", lambda: load.sent >= 50, timeout=30)
            victim = live_pods_of(kctl, name)[0]["metadata"]["name"]  # not a draining one
            kctl.run("delete", "pod", victim, "-n", NAMESPACE, "--wait=true", timeout=90)
            wait_rolled_out(kctl, name)
            sent_at_end = load.sent
            wait_until("requests after the replacement", lambda: load.sent >= sent_at_end + 50, 30)
        print(load.report("pod deleted"))
        names = {p["metadata"]["name"] for p in live_pods_of(kctl, name)}
        assert victim not in names and len(names) == 2, names
        assert load.failed == 0, load.report("pod deleted")
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- the restricted security context in a real container ---------------------------------


def test_restricted_security_context_holds_in_the_container(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles
) -> None:
    name = "locked-down"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    kctl.apply(manifest(name, model), NAMESPACE)
    try:
        wait_ready(kctl, name)
        (pod,) = pods_of(kctl, name)
        probe = (
            "import os, json\n"
            "caps = {l.split(':')[0]: l.split()[1] for l in open('/proc/1/status')"
            " if l.startswith('Cap')}\n"
            "try:\n    open('/probe', 'w'); writable = True\n"
            "except OSError:\n    writable = False\n"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root_writable': writable,"
            " 'caps': caps, 'no_new_privs': [l.split()[1] for l in open('/proc/1/status')"
            " if l.startswith('NoNewPrivs')][0]}))\n"
        )
        out = kctl.run("exec", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "runtime", "--",
                       "python", "-c", probe).stdout  # fmt: skip
        facts = json.loads(out)
        assert facts["uid"] == 65532 and facts["gid"] == 65532, facts
        assert facts["root_writable"] is False, facts
        assert facts["caps"]["CapEff"] == "0000000000000000", facts
        assert facts["caps"]["CapPrm"] == "0000000000000000", facts
        assert facts["no_new_privs"] == "1", facts
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- autoscaling on real CPU ----------------------------------------------------------------


def test_hpa_scales_on_the_cpu_the_kubelet_measures(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles
) -> None:
    """Load through the Service raises the pod's real CPU; metrics-server reads it from the
    real kubelet; the HPA scales 1 -> 2 and back to 1 once the load stops."""
    name = "autoscaled"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    body = manifest(name, model)
    del body["spec"]["replicas"]
    body["spec"]["autoscaling"] = {
        "minReplicas": 1, "maxReplicas": 2, "targetCPUUtilizationPercentage": 50,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0},
                     "scaleUp": {"stabilizationWindowSeconds": 0}},
    }  # fmt: skip
    kctl.apply(body, NAMESPACE)
    try:
        wait_ready(kctl, name)
        (pod,) = pods_of(kctl, name)

        def cpu_m() -> float | None:
            proc = kctl.run("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}"
                            f"/pods/{pod['metadata']['name']}", check=False)  # fmt: skip
            if proc.returncode != 0:
                return None
            usage = json.loads(proc.stdout)["containers"][0]["usage"]["cpu"]
            return float(usage[:-1]) / 1e6 if usage.endswith("n") else float(usage.rstrip("m"))

        wait_until("metrics-server to report the pod's CPU from the kubelet", cpu_m, timeout=90)

        def replicas(want: int) -> bool:
            hpa = kctl.get("hpa", name, NAMESPACE)
            return (hpa.get("status") or {}).get("desiredReplicas") == want

        with Load(service_address(kctl, name), name, clients=3).running() as load:
            wait_until("the HPA to want 2 replicas under load", lambda: replicas(2), timeout=180)
            wait_until(
                "2 Ready runtime pods",
                lambda: sum(condition(p, "Ready").get("status") == "True"
                            for p in pods_of(kctl, name)) == 2,
                timeout=120,
            )  # fmt: skip
        print(load.report("hpa load"), f"peak seen {cpu_m()} m")
        wait_until("the HPA to scale back to 1 replica", lambda: replicas(1), timeout=180)
        wait_until("1 runtime pod", lambda: len(live_pods_of(kctl, name)) == 1, timeout=120)
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- large models: a folder, an archive, the cache -------------------------------------------


@dataclass
class LargeModel:
    """The external-data model (tests/external_data.py) as a folder, and as a .tar.gz
    served over HTTP from the node's address, with their digests."""

    folder: Path
    set_digest: str
    files: ModelFiles
    archive: str = "big.tar.gz"


@pytest.fixture(scope="module")
def large_model(
    node_ip: str, mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LargeModel]:
    import tarfile

    from modelservice_runtime.fetch.trees import set_digest

    from tests import external_data

    folder = external_data.write_model(tmp_path_factory.mktemp("large") / "big").parent
    root = tmp_path_factory.mktemp("large-files")
    with tarfile.open(root / "big.tar.gz", "w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    with serve_model_files(node_ip, mlp_onnx, root) as files:
        yield LargeModel(folder, set_digest(folder), files)


def assert_answers_like_numpy(address: str, model_name: str) -> None:
    """A V2 request through the Service, against x @ W + b on the weights the external
    data file holds."""
    from tests import external_data

    x = np.random.default_rng(3).standard_normal((2, external_data.FEATURES)).astype(np.float32)
    body = {"inputs": [{"name": external_data.INPUT, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    conn = http.client.HTTPConnection(address, timeout=30)
    try:
        conn.request("POST", f"/v2/models/{model_name}/infer", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, answer
    (out,) = answer["outputs"]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, external_data.expected(x), rtol=1e-4, atol=1e-4)


def node_dir(name: str, owner: int | None = None) -> Path:
    """A directory on the node (this host) for a hostPath, removed by the caller."""
    path = REPO_ROOT / ".cache" / "node" / f"{name}-{SUFFIX}"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def fetch_log(kctl: Kubectl, pod: str) -> str:
    return kctl.run("logs", pod, "-n", NAMESPACE, "-c", "model-fetch").stdout


@pytest.mark.parametrize("form", ["pvc-folder", "http-archive"])
def test_a_model_with_external_data_serves_from_a_folder_or_an_archive(
    kctl: Kubectl, chart_operator: str, large_model: LargeModel, form: str
) -> None:
    name = f"large-{form}"
    with contextlib.ExitStack() as stack:
        if form == "pvc-folder":
            pv_dir = node_dir("pv-large")
            stack.callback(shutil.rmtree, pv_dir, True)
            shutil.copytree(large_model.folder, pv_dir / "big")
            for p in [pv_dir / "big", *(pv_dir / "big").iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)
            hostpath_claim(kctl, stack, pv_dir, f"msvc-large-{SUFFIX}", "large-models")
            # The set digest: the init container verifies the folder before the runtime
            # serves it in place from the claim.
            model = {"uri": "pvc://large-models/big/", "sha256": large_model.set_digest}
            served = "/mnt/model-pvc/big/"
        else:
            model = {
                "uri": large_model.files.url(large_model.archive),
                "sha256": large_model.files.sha256[large_model.archive],
            }
            served = "/models/model"
        kctl.apply(manifest(name, {**model, "name": name}), NAMESPACE)
        try:
            wait_ready(kctl, name)
            dep = kctl.get("deployment", name, NAMESPACE)
            runtime = dep["spec"]["template"]["spec"]["containers"][0]
            assert runtime["command"][:3] == ["modelservice", "serve", served]
            assert_loaded_before_ready(kctl, name)
            assert_answers_like_numpy(service_address(kctl, name), name)
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


def _seconds(a: str, b: str) -> float:
    return (_parse_time(b) - _parse_time(a)).total_seconds()


def start_figures(pod: dict[str, Any]) -> dict[str, float]:
    """The pod's own timestamps (whole seconds): its fetch, and creation -> Ready."""
    (fetch,) = pod["status"]["initContainerStatuses"]
    done = fetch["state"]["terminated"]
    return {
        "fetch_s": _seconds(done["startedAt"], done["finishedAt"]),
        "created_to_ready_s": _seconds(
            pod["metadata"]["creationTimestamp"], condition(pod, "Ready")["lastTransitionTime"]
        ),
    }


def test_a_second_replica_on_the_node_starts_from_the_cache(
    kctl: Kubectl, chart_operator: str, large_model: LargeModel
) -> None:
    """A hostPath cache on the node: the first pod misses (downloads into the cache), the
    second, scaled up beside it, hits and copies from the cache without a download."""
    name = "large-cached"
    cache_dir = node_dir("model-cache", owner=65532)  # the runtime's uid must write it
    archive = large_model.archive
    model = {"uri": large_model.files.url(archive), "sha256": large_model.files.sha256[archive],
             "name": name, "cache": {"hostPath": str(cache_dir), "maxSize": "1Gi"}}  # fmt: skip
    kctl.apply(manifest(name, model), NAMESPACE)
    try:
        wait_ready(kctl, name)
        (first,) = pods_of(kctl, name)
        log1 = fetch_log(kctl, first["metadata"]["name"])
        assert "cache: miss sha256-" in log1, log1
        entry = cache_dir / "entries" / f"sha256-{large_model.files.sha256[archive]}"
        assert sorted(p.name for p in (entry / "data").iterdir()) == ["model.onnx", "weights.bin"]
        kctl.run("scale", "msvc", name, "--replicas=2", "-n", NAMESPACE)

        def two_ready() -> list[dict[str, Any]] | None:
            pods = [p for p in pods_of(kctl, name) if condition(p, "Ready").get("status") == "True"]
            return pods if len(pods) == 2 else None

        try:
            pods = wait_until("2 Ready pods of the cached ModelService", two_ready, timeout=180)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(kctl, name)}") from None
        (second,) = [p for p in pods if p["metadata"]["name"] != first["metadata"]["name"]]
        log2 = fetch_log(kctl, second["metadata"]["name"])
        assert "cache: hit sha256-" in log2 and "by copy" in log2, log2
        assert first["spec"]["nodeName"] == second["spec"]["nodeName"]
        a, b = (
            start_figures(kctl.get("pod", first["metadata"]["name"], NAMESPACE)),
            start_figures(second),
        )
        print(f"cache: first replica (miss) {a}, second replica (hit) {b}")
        for _ in range(4):  # through the Service: either pod answers the same
            assert_answers_like_numpy(service_address(kctl, name), name)
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)
        shutil.rmtree(cache_dir, ignore_errors=True)


@contextlib.contextmanager
def busy_then_serving(
    node_ip: str, body: bytes, retry_after_s: int, busy_call: int = 1, file: str = "busy.tar.gz"
) -> Iterator[str]:
    """An HTTP server on the node's address whose GET number `busy_call` (the first by
    default) is a 503 with Retry-After, the others the body; yields the URL of `file`."""
    from http.server import BaseHTTPRequestHandler

    calls: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(self.path)
            if len(calls) == busy_call:
                self.send_response(503)
                self.send_header("Retry-After", str(retry_after_s))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((node_ip, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{node_ip}:{server.server_address[1]}/{file}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_fetching_pod_shows_its_last_log_line_in_the_status(
    kctl: Kubectl, chart_operator: str, large_model: LargeModel, node_ip: str
) -> None:
    """The fetch's first attempt gets a 503 with Retry-After: the fetch logs its retry line
    and waits; the operator reads that line from the pod's log (pods/log) into the status."""
    name = "large-progress"
    body = (large_model.files.root / large_model.archive).read_bytes()
    with busy_then_serving(node_ip, body, retry_after_s=40) as url:
        sha = hashlib.sha256(body).hexdigest()
        kctl.apply(manifest(name, {"uri": url, "sha256": sha, "name": name}), NAMESPACE)
        try:

            def progress() -> dict[str, Any] | None:
                obj = kctl.get("msvc", name, NAMESPACE)
                ready = condition(obj, "Ready")
                shown = ready.get("reason") == "FetchingModel" and "last output:" in ready.get(
                    "message", ""
                )
                return {"phase": obj["status"]["phase"], **ready} if shown else None

            try:
                seen = wait_until(f"{name}: FetchingModel with the pod's last line", progress,
                                  timeout=60, interval=1)  # fmt: skip
            except AssertionError as e:
                operator_log = kctl.run("logs", chart_operator, "-n", OPERATOR_NAMESPACE,
                                        "--tail=40", check=False).stdout  # fmt: skip
                raise AssertionError(
                    f"{e}\n{describe(kctl, name)}\noperator log:\n{operator_log}"
                ) from None
            assert seen["phase"] == "Progressing", seen
            assert "attempt 1/4 failed (HTTP 503" in seen["message"], seen["message"]
            assert "retrying in 40s" in seen["message"], seen["message"]
            wait_ready(kctl, name)
            ready = condition(kctl.get("msvc", name, NAMESPACE), "Ready")
            assert "last output" not in ready["message"], ready
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


def test_the_hpa_does_not_scale_down_while_a_pod_loads_its_model(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles, node_ip: str
) -> None:
    """kubeai#499: a ReplicaSet scaled down removes its not-Ready pods first, so an HPA
    scale-down while a pod fetches or loads kills that pod. Here a second pod's fetch is
    told to retry in 30 s while the HPA wants 1 replica and would scale down at its next
    5 s sync (no stabilization window). The operator holds the HPA's scale-down while the
    pod loads, and lets go once it is Ready; then the HPA scales back to 1."""
    name = "held-scale-down"
    body = (model_files.root / "mlp.onnx").read_bytes()
    with busy_then_serving(node_ip, body, retry_after_s=30, busy_call=2, file="mlp.onnx") as url:
        doc = manifest(name, {"uri": url, "sha256": model_files.sha256["mlp.onnx"]})
        del doc["spec"]["replicas"]
        doc["spec"]["autoscaling"] = {
            "minReplicas": 1, "maxReplicas": 2, "targetCPUUtilizationPercentage": 50,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        }  # fmt: skip
        kctl.apply(doc, NAMESPACE)
        try:
            wait_ready(kctl, name)
            (first,) = pods_of(kctl, name)

            def hpa() -> dict[str, Any]:
                return kctl.get("hpa", name, NAMESPACE)

            def held() -> bool:
                scale_down = (hpa()["spec"].get("behavior") or {}).get("scaleDown") or {}
                return scale_down.get("selectPolicy") == "Disabled"

            def wants_one() -> bool:
                st = hpa().get("status") or {}
                return bool(st.get("currentMetrics")) and st.get("desiredReplicas") == 1

            wait_until("the HPA to read the pod's CPU and want 1 replica", wants_one, timeout=120)
            assert not held()  # nothing loads: the scale-down is free
            kctl.run("scale", "deployment", name, "--replicas=2", "-n", NAMESPACE)

            def second() -> dict[str, Any] | None:
                pods = [p for p in live_pods_of(kctl, name) if p["metadata"]["uid"]
                        != first["metadata"]["uid"]]  # fmt: skip
                return pods[0] if pods else None

            loading = wait_until("a second pod", second, timeout=60)
            wait_until("the operator to hold the HPA's scale-down", held,
                       timeout=30)  # fmt: skip
            # Its fetch waits 30 s: over the next 20 s the HPA, which wants 1 replica, syncs
            # 4 times; the loading pod must stay and the Deployment keep 2 replicas.
            end = time.monotonic() + 20
            while time.monotonic() < end:
                now = second()
                assert now is not None and now["metadata"]["uid"] == loading["metadata"]["uid"], (
                    f"the loading pod was removed\n{describe(kctl, name)}"
                )
                assert condition(now, "Ready").get("status") != "True", "it loaded too soon"
                replicas = kctl.get("deployment", name, NAMESPACE)["spec"]["replicas"]
                assert replicas == 2, f"the HPA scaled down to {replicas} while a pod loads"
                time.sleep(1)
            wait_until(
                "the second pod to be Ready",
                lambda: condition(second() or {}, "Ready").get("status") == "True",
                timeout=120,
            )
            wait_until("the operator to let the scale-down go", lambda: not held(),
                       timeout=30)  # fmt: skip
            wait_until("the HPA to scale back to 1 pod", lambda: len(live_pods_of(kctl, name)) == 1,
                       timeout=120)  # fmt: skip
            reasons = [e.get("reason") for e in kctl.events(NAMESPACE, name)]
            assert "ScaleDownHeld" in reasons and "ScaleDownResumed" in reasons, reasons
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- a language model ----------------------------------------------------------------------


@contextlib.contextmanager
def tiny_llm_archive(
    node_ip: str, mlp_onnx: Path, tiny_llm: tuple[Path, Path], tmp_path: Path, name: str
) -> Iterator[dict[str, Any]]:
    """The tiny Llama's onnxruntime-genai folder as a .tar.gz served over HTTP from the
    node's address: the `spec.model` of a `format: genai` ModelService."""
    import tarfile

    root = tmp_path / "files"
    root.mkdir()
    with tarfile.open(root / "tiny-llm.tar.gz", "w:gz") as tar:
        for f in sorted(tiny_llm[1].iterdir()):
            tar.add(f, arcname=f.name)
    with serve_model_files(node_ip, mlp_onnx, root) as files:
        yield {
            "uri": files.url("tiny-llm.tar.gz"),
            "sha256": files.sha256["tiny-llm.tar.gz"],
            "name": name,
            "format": "genai",
        }


def test_a_language_model_becomes_ready_and_answers_a_chat_completion_through_the_service(
    kctl: Kubectl,
    chart_operator: str,
    node_ip: str,
    mlp_onnx: Path,
    tiny_llm: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The tiny Llama's onnxruntime-genai folder as a .tar.gz over HTTP, `format: genai`:
    Ready, then greedy tokens through the Service equal onnxruntime-genai's in-process
    Generator on the same folder, and the openai client gets a chat completion."""
    import httpx
    import openai
    from modelservice_runtime.tools.export_llm import greedy

    name = "tiny-llm"
    with tiny_llm_archive(node_ip, mlp_onnx, tiny_llm, tmp_path, name) as model:
        kctl.apply(manifest(name, model), NAMESPACE)
        try:
            wait_ready(kctl, name)
            address = service_address(kctl, name)
            prompt = "Hello, how are you"
            r = httpx.post(
                f"http://{address}/v1/completions",
                json={"prompt": prompt, "max_tokens": 16, "temperature": 0,
                      "return_token_ids": True},
                timeout=60,
            )  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["token_ids"] == greedy(tiny_llm[1], (prompt,), 16)[0]
            client = openai.OpenAI(base_url=f"http://{address}/v1", api_key="-", max_retries=0)
            chat = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            assert chat.usage is not None and chat.usage.completion_tokens >= 1
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


@dataclass
class StreamLoad(Load):
    """Clients each streaming greedy completions through the Service without pause, each on
    a new connection; a stream counts as completed only when it ends in `data: [DONE]`
    after a finish_reason, else as broken (`failed`: a refusal, a reset, a cut stream)."""

    clients: int = 16
    max_tokens: int = 32

    def _one(self, body: bytes) -> None:
        host, port = self.address.rsplit(":", 1)
        ok, err = False, ""
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            ok = (
                resp.status == 200
                and data.endswith(b"data: [DONE]\n\n")
                and b'"finish_reason":"length"' in data
            )
            err = f"HTTP {resp.status}: {data[-200:]!r}"
            conn.close()
        except (OSError, http.client.HTTPException) as e:
            err = repr(e)
        with self._lock:
            self.sent += 1
            if not ok:
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append(err)

    def _run(self) -> None:
        body = json.dumps({"model": self.model, "prompt": "Once upon a time",
                           "max_tokens": self.max_tokens, "temperature": 0,
                           "stream": True}).encode()  # fmt: skip
        while not self._stop.is_set():
            self._one(body)

    def report(self, what: str) -> str:
        return (
            f"{what}: {self.sent} streams sent, {self.sent - self.failed} completed, "
            f"{self.failed} broken {self.errors}"
        )


def test_a_language_model_rollout_under_16_streams_breaks_no_stream(
    kctl: Kubectl,
    chart_operator: str,
    node_ip: str,
    mlp_onnx: Path,
    tiny_llm: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """Two replicas of the tiny Llama under 16 streaming clients; a runtime change rolls new
    pods in while the old ones drain (SIGTERM: in-flight streams finish, the port closes to
    new ones). Every stream sent completes."""
    name = "llm-rollout"
    with tiny_llm_archive(node_ip, mlp_onnx, tiny_llm, tmp_path, name) as model:
        kctl.apply(manifest(name, model, replicas=2), NAMESPACE)
        try:
            wait_ready(kctl, name)
            address = service_address(kctl, name)
            with StreamLoad(address, name).running() as load:
                wait_until("streams to flow", lambda: load.sent >= 32, timeout=60)
                changed = {"env": [{"name": "MODELSERVICE_ROLLOUT_TEST", "value": "1"}]}
                kctl.apply(manifest(name, model, replicas=2, runtime=changed), NAMESPACE)
                wait_rolled_out(kctl, name)
                wait_ready(kctl, name)
                sent_at_end = load.sent
                wait_until("streams after the rollout", lambda: load.sent >= sent_at_end + 32, 60)
            print(load.report("genai rollout"))
            assert load.failed == 0, load.report("genai rollout")
        finally:
            kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


# --- through the Gateway (Traefik on the node, hack/gateway-up.sh) ----------------------------


def gateway_address(kctl: Kubectl) -> str:
    """host:port a client of the Gateway uses: its status address and its listener's port."""
    gateway = kctl.maybe_get("gateway", GATEWAY.name, GATEWAY.namespace)
    if gateway is None:
        needed(f"no Gateway {GATEWAY.namespace}/{GATEWAY.name}: run hack/gateway-up.sh")
    assert gateway is not None
    if condition(gateway, "Programmed").get("status") != "True":
        pytest.fail(f"the Gateway is not Programmed: {json.dumps(gateway.get('status'))}")
    (address,) = gateway["status"]["addresses"]
    (listener,) = gateway["spec"]["listeners"]
    return f"{address['value']}:{listener['port']}"


def a_second_mlp(source: Path, dest: Path) -> Path:
    """The MLP with its last bias moved by one: same shapes, other outputs (the canary)."""
    import onnx

    model = onnx.load(str(source))
    last = model.graph.initializer[-1]
    values = onnx.numpy_helper.to_array(last) + 1.0
    last.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), last.name))
    onnx.save(model, str(dest))
    return dest


def answered_by(address: str, host: str, model: str, x: list[float],
                outputs: dict[str, np.ndarray], n: int) -> dict[str, int]:  # fmt: skip
    """n V2 requests through the Gateway with this Host, on one kept-alive connection (the
    Gateway picks a backend per request): how many each revision answered, told apart by
    its output."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                   "data": x}]}).encode()  # fmt: skip
    counts = dict.fromkeys(outputs, 0)
    ip, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(ip, int(port), timeout=10)
    try:
        for _ in range(n):
            conn.request("POST", f"/v2/models/{model}/infer", body,
                         {"Host": host, "Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, f"HTTP {resp.status} through the Gateway: {data[:300]!r}"
            got = np.asarray(json.loads(data)["outputs"][0]["data"], dtype=np.float32)
            (who,) = [k for k, v in outputs.items() if np.allclose(got, v, atol=1e-4)]
            counts[who] += 1
    finally:
        conn.close()
    return counts


def answered_over_grpc(address: str, authority: str, model: str, x: np.ndarray,
                       outputs: dict[str, np.ndarray], n: int) -> dict[str, int]:  # fmt: skip
    """n gRPC inferences (unmodified tritonclient, h2c) through the Gateway with this
    authority: how many each revision answered, told apart by its output."""
    import tritonclient.grpc as grpcclient

    counts = dict.fromkeys(outputs, 0)
    client = grpcclient.InferenceServerClient(
        address, channel_args=[("grpc.default_authority", authority)]
    )
    try:
        for _ in range(n):
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer(model, [inp]).as_numpy("output").ravel()
            (who,) = [k for k, v in outputs.items() if np.allclose(got, v, atol=1e-4)]
            counts[who] += 1
    finally:
        client.close()
    return counts


def serves(address: str, host: str, model: str, n: int = 20) -> bool:
    """n requests in a row through the Gateway answered 200."""
    ip, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(ip, int(port), timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", f"/v2/models/{model}/ready", headers={"Host": host})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                return False
        return True
    finally:
        conn.close()


def test_a_canary_split_through_the_gateway_is_the_percent_asked(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles, mlp_onnx: Path
) -> None:
    """trafficPercent 20 through a real Gateway: about 20% of 1,000 requests answered by the
    canary; 0 and 100 exactly none and all, once the Gateway has the new weights. The
    ModelService names no Gateway: the operator's default (the chart's gateway.default)."""
    import onnxruntime as ort

    address = gateway_address(kctl)
    canary_file = a_second_mlp(mlp_onnx, model_files.root / "mlp-canary.onnx")
    sha = hashlib.sha256(canary_file.read_bytes()).hexdigest()
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
    outputs = {
        who: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        .run(None, {"input": x})[0]
        .ravel()
        for who, f in (("primary", mlp_onnx), ("canary", canary_file))
    }
    assert not np.allclose(outputs["primary"], outputs["canary"], atol=1e-4)
    name = "through-gw"
    model = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}

    def with_percent(percent: int) -> dict[str, Any]:
        canary = {"model": {"uri": model_files.url("mlp-canary.onnx"), "sha256": sha},
                  "trafficPercent": percent}  # fmt: skip
        return manifest(name, model, canary=canary)

    def weights_are(percent: int) -> dict[str, Any] | None:
        obj = kctl.get("msvc", name, NAMESPACE)
        st = obj.get("status") or {}
        canary = st.get("canary") or {}
        current = st.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and canary.get("canaryWeight") == percent else None

    def settled(expected: str) -> None:
        """The Gateway answers from `expected` alone, 20 times in a row (it has the weights)."""
        wait_until(
            f"the Gateway to send every request to the {expected}",
            lambda: (
                answered_by(address, host, name, x.ravel().tolist(), outputs, 20)[expected] == 20
            ),
            timeout=30,
        )

    kctl.apply(with_percent(20), NAMESPACE)
    try:
        wait_ready(kctl, name)
        obj = wait_until("the route weighted 80/20", lambda: weights_are(20), timeout=180)
        st = obj["status"]
        assert st["canary"]["mode"] == "HTTPRoute", st
        assert st["gateway"] == f"{GATEWAY.namespace}/{GATEWAY.name}", st
        host = st["gatewayHost"]
        assert host == f"{name}.{NAMESPACE}.models.internal", st
        route = kctl.get("httproute", name, NAMESPACE)
        # Traefik accepted the routes at their current version: the ModelService says so.
        routed = wait_until(
            "condition Routed True (Traefik accepted the routes)",
            lambda: condition(kctl.get("msvc", name, NAMESPACE), "Routed").get("status") == "True"
            and condition(kctl.get("msvc", name, NAMESPACE), "Routed"),
            timeout=30,
        )  # fmt: skip
        assert routed["reason"] == "RouteAccepted", routed
        assert f"Gateway {GATEWAY.namespace}/{GATEWAY.name}" in routed["message"], routed
        assert route["spec"]["hostnames"] == [host]
        # The route was made at 100/0 (the canary not Ready yet) and moved to 80/20: Traefik
        # serves the first weights until its next rebuild, so wait for a canary answer.
        wait_until(
            "the Gateway to send some requests to the canary",
            lambda: answered_by(address, host, name, x.ravel().tolist(), outputs, 50)["canary"],
            timeout=30,
        )

        counts = answered_by(address, host, name, x.ravel().tolist(), outputs, 1000)
        print(f"trafficPercent 20 through the Gateway, 1,000 requests: {counts}")
        assert 160 <= counts["canary"] <= 240, counts

        # gRPC through the same Gateway: the GRPCRoute splits it alike, on its own host.
        grpc_host = st["gatewayGrpcHost"]
        assert grpc_host == f"grpc.{host}", st
        grpc_route = kctl.get("grpcroute", name, NAMESPACE)
        assert [b["weight"] for b in grpc_route["spec"]["rules"][0]["backendRefs"]] == [80, 20]
        counts = answered_over_grpc(address, grpc_host, name, x, outputs, 500)
        print(f"trafficPercent 20 through the Gateway, 500 gRPC calls: {counts}")
        assert 80 <= counts["canary"] <= 120, counts

        # A host no route answers: the Gateway's 404, not some ModelService.
        conn = http.client.HTTPConnection(*address.rsplit(":", 1), timeout=10)
        conn.request("GET", "/v2/health/ready", headers={"Host": "nobody.models.internal"})
        assert conn.getresponse().status == 404
        conn.close()

        for percent, only in ((0, "primary"), (100, "canary")):
            kctl.apply(with_percent(percent), NAMESPACE)
            wait_until(f"the route weighted at {percent}%", lambda p=percent: weights_are(p), 180)
            settled(only)
            counts = answered_by(address, host, name, x.ravel().tolist(), outputs, 200)
            print(f"trafficPercent {percent} through the Gateway, 200 requests: {counts}")
            assert counts[only] == 200, counts
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)


def test_rollback_and_promotion_through_the_gateway_lose_no_request(
    kctl: Kubectl, chart_operator: str, model_files: ModelFiles, mlp_onnx: Path
) -> None:
    """Clients send through the Gateway without pause while the canary is rolled back (one
    edit: spec.canary removed) and, added again, promoted (one edit: spec.model becomes the
    canary's model, spec.canary removed): no request fails, no 503 while the split moves."""
    address = gateway_address(kctl)
    canary_file = a_second_mlp(mlp_onnx, model_files.root / "mlp-promoted.onnx")
    primary = {"uri": model_files.url("mlp.onnx"), "sha256": model_files.sha256["mlp.onnx"]}
    promoted = {
        "uri": model_files.url(canary_file.name),
        "sha256": hashlib.sha256(canary_file.read_bytes()).hexdigest(),
    }
    name = "gw-promote"

    def with_canary(model: dict[str, Any]) -> dict[str, Any]:
        canary = {"model": promoted, "trafficPercent": 50}
        return manifest(name, model, replicas=2, canary=canary)

    def split_in_place() -> str:
        def weighted() -> str | None:
            st = kctl.get("msvc", name, NAMESPACE).get("status") or {}
            return (
                st.get("gatewayHost")
                if (st.get("canary") or {}).get("canaryWeight") == 50
                else None
            )

        wait_ready(kctl, name)
        host = wait_until("the route weighted 50/50", weighted, timeout=180)
        # Traefik has the route a moment after the status says so (it rebuilds its
        # configuration at most every 2 s): until then it answers 503.
        wait_until("the Gateway to serve the route", lambda: serves(address, host, name), 30)
        return host

    def under_load(host: str, what: str, edit: dict[str, Any]) -> None:
        with Load(address, name, clients=3, host=host).running() as load:
            wait_until("requests to flow", lambda: load.sent >= 50, timeout=30)
            kctl.apply(edit, NAMESPACE)
            wait_until(
                "the canary's Deployment deleted",
                lambda: kctl.maybe_get("deployment", f"{name}-canary", NAMESPACE) is None,
                timeout=60,
            )
            wait_rolled_out(kctl, name)
            wait_ready(kctl, name)
            sent_at_end = load.sent
            wait_until(f"requests after the {what}", lambda: load.sent >= sent_at_end + 50, 30)
        print(load.report(f"{what} through the Gateway"))
        assert load.failed == 0, load.report(what)

    kctl.apply(with_canary(primary), NAMESPACE)
    try:
        host = split_in_place()
        under_load(host, "rollback", manifest(name, primary, replicas=2))
        kctl.apply(with_canary(primary), NAMESPACE)
        host = split_in_place()
        under_load(host, "promotion", manifest(name, promoted, replicas=2))
    finally:
        kctl.run("delete", "msvc", name, "-n", NAMESPACE, "--wait=true", check=False)
