"""Fixtures for tests against the real local control plane (`make cluster-up`).

- `kctl` (session): kubectl bound to $KUBECONFIG or .cache/cluster/kubeconfig; every test that
  uses it is skipped, with the reason, when the kubeconfig is absent or the API unreachable.
- `modelservice_crd` (session): crds/ applied once with kubectl and waited to be Established.
- `modelservice_operator` (session): `modelservice operator` as a subprocess, watching only
  this session's namespaces (a kopf glob), logging to a file that failures print.
- `msvc_namespace` (per test): a fresh namespace; ModelServices are deleted while the
  operator still runs, then the namespace.

Every wait has a deadline and names what it waited for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import on_fake_nodes
from tests.integration.processes import free_port, stop
from tests.needs import needed
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KUBECONFIG = REPO_ROOT / ".cache" / "cluster" / "kubeconfig"
CRD_PATH = REPO_ROOT / "crds" / "modelservices.serving.modelservice.io.yaml"
CRD_NAME = "modelservices.serving.modelservice.io"
# kwok never pulls images; the name only has to be recognisable in assertions.
TEST_RUNTIME_IMAGE = "registry.invalid/modelservice-runtime:it"
SESSION_ID = uuid.uuid4().hex[:6]
NAMESPACE_PREFIX = f"msvc-it-{SESSION_ID}"


def _binary(name: str) -> str:
    local = REPO_ROOT / ".cache" / "bin" / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@dataclass
class Kubectl:
    """kubectl bound to one kubeconfig; failures carry kubectl's stderr."""

    kubeconfig: Path
    binary: str = field(default_factory=lambda: _binary("kubectl"))

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", str(self.kubeconfig), "--request-timeout=20s", *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(
        self, manifest: dict[str, Any] | str, namespace: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-n", namespace, "-f", "-", stdin=text, check=check)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self.run("get", kind, name, "-n", namespace, "-o", "json").stdout)

    def maybe_get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        proc = self.run(
            "get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", check=False
        )
        if proc.returncode != 0:
            raise AssertionError(proc.stderr.strip())
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def list(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args).stdout)["items"]

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.list("events", namespace)
            if e.get("involvedObject", {}).get("kind") == "ModelService"
            and e["involvedObject"].get("name") == name
        ]


@pytest.fixture(scope="session")
def kctl() -> Kubectl:
    kubeconfig = Path(os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG)
    if not kubeconfig.is_file():
        needed(
            f"no kubeconfig at {kubeconfig}: start the local control plane with "
            "`make cluster-up` (or run `make test`)"
        )
    k = Kubectl(kubeconfig)
    deadline = time.monotonic() + 60  # a control plane still starting gets a minute
    while True:
        try:
            proc = k.run("get", "--raw", "/readyz", check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            needed(f"kubectl could not reach the API server of {kubeconfig}: {e}")
        if proc.returncode == 0:
            return k
        if time.monotonic() > deadline:
            needed(f"API server of {kubeconfig} is not ready: {proc.stderr.strip()[:300]}")
        time.sleep(2)


@pytest.fixture(scope="session")
def modelservice_crd(kctl: Kubectl) -> str:
    kctl.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    kctl.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=90)
    # Discovery caches can lag the Established condition by a moment.
    wait_until(
        "kubectl to discover the msvc short name",
        lambda: kctl.run("get", "msvc", "-A", check=False).returncode == 0,
        timeout=30,
    )
    return CRD_NAME


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    probe_port: int
    metrics_port: int

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def run_operator(
    kubeconfig: Path,
    namespace_glob: str,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """`modelservice operator` in a subprocess watching `namespace_glob` (with `extra_env`:
    its settings, e.g. MODELSERVICE_DEFAULT_GATEWAY); stopped by PID."""
    probe_port, metrics_port = free_port(), free_port()
    env = (
        os.environ
        | dict(extra_env or {})
        | {
            "KUBECONFIG": str(kubeconfig),
            "MODELSERVICE_RUNTIME_IMAGE": TEST_RUNTIME_IMAGE,
            "MODELSERVICE_NAMESPACES": namespace_glob,
            "MODELSERVICE_OPERATOR_PROBE_PORT": str(probe_port),
            "MODELSERVICE_OPERATOR_METRICS_PORT": str(metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    cmd = [
        sys.executable, "-m", "modelservice_cli", "operator",
        f"--liveness=http://127.0.0.1:{probe_port}/healthz",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    op = OperatorProcess(proc, log_path, probe_port, metrics_port)
    try:
        wait_until(
            "the operator's liveness endpoint (modelservice operator started)",
            lambda: (proc.poll() is None and _healthy(probe_port)) or proc.poll() is not None,
            timeout=90,
        )
        if proc.poll() is not None:
            pytest.fail(f"modelservice operator exited {proc.returncode}:\n{op.log_tail()}")
        yield op
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def modelservice_operator(
    kctl: Kubectl, modelservice_crd: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    with run_operator(kctl.kubeconfig, f"{NAMESPACE_PREFIX}-*", log_path) as op:
        yield op


@pytest.fixture
def msvc_namespace(
    request: pytest.FixtureRequest, kctl: Kubectl, modelservice_operator: OperatorProcess
) -> Iterator[str]:
    name = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
    kctl.run("create", "namespace", name)
    yield name
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- operator log (tail) ---\n{modelservice_operator.log_tail(120)}")
    # Delete ModelServices while the operator still runs, then the namespace (no wait: the
    # namespace controller finishes it in the background).
    kctl.run(
        "delete",
        "msvc",
        "--all",
        "-n",
        name,
        "--wait=true",
        "--timeout=60s",
        check=False,
        timeout=90,
    )
    kctl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


# --- manifests and conditions, shared by the operator test files ---------------------------


def msvc(name: str, **spec: Any) -> dict[str, Any]:
    """A ModelService manifest with a placeholder model, on the kwok fake nodes (where the pod
    never runs; the real node would try to fetch the placeholder)."""
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": on_fake_nodes({"model": {"uri": "https://models.example.com/m.onnx"}, **spec}),
    }


def is_current(obj: dict[str, Any], phase: str = "Ready") -> bool:
    """status.phase is `phase` and the operator has seen the current generation."""
    st = obj.get("status") or {}
    fresh = st.get("observedGeneration") == obj["metadata"]["generation"]
    return fresh and st.get("phase") == phase


def wait_phase(k: Kubectl, ns: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
    """The one wait for a ModelService phase: status.phase == phase at the current generation.
    On timeout the error shows the last status, the Deployment's status and the pods' phases."""
    seen: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        obj = k.get("msvc", name, ns)
        st = obj.get("status") or {}
        seen["status"] = {
            key: st.get(key)
            for key in ("phase", "observedGeneration", "replicaSummary", "conditions")
        }
        seen["generation"] = obj["metadata"]["generation"]
        return obj if is_current(obj, phase) else None

    try:
        return wait_until(
            f"ModelService {ns}/{name} phase {phase} at its current generation",
            probe,
            timeout=timeout,
        )
    except AssertionError as e:
        dep = k.maybe_get("deployment", name, ns)
        pods = k.list("pods", ns, f"app.kubernetes.io/instance={name}")
        raise AssertionError(
            f"{e}\nlast seen: {seen}\nDeployment status: {(dep or {}).get('status')}\n"
            f"pods: {[p['status'].get('phase') for p in pods]}"
        ) from None


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    """The condition of type `ctype` in obj's status, or {}."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}
