"""`helm install` of charts/modelservice-operator into the real local control plane.

Real helm and kubectl against the kube-apiserver of `make cluster-up` (kwok makes the operator
pod Running; its image is never pulled). RBAC is checked as the operator's ServiceAccount with
`kubectl auth can-i --as=system:serviceaccount:<ns>:<sa>` and that account's groups: it can do
what the operator does and nothing else (no Secrets, no pods/exec, no other kinds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nodes import FAKE_NODE_SELECTOR, FAKE_NODE_TOLERATION
from tests.integration.processes import free_port, stop
from tests.needs import needed
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelservice-operator"
HELM_TIMEOUT = "180s"
MSVC = "modelservices.serving.modelservice.io"


def _tool(name: str) -> str | None:
    built = ROOT / ".cache" / "bin" / name
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return shutil.which(name)


@dataclass
class Cluster:
    """helm and kubectl bound to the local control plane's kubeconfig."""

    kubeconfig: str
    helm_bin: str
    kubectl_bin: str

    def _run(self, cmd: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess:
        env = os.environ | {"KUBECONFIG": self.kubeconfig}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd[1:])}` exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return self._run([self.kubectl_bin, "--request-timeout=20s", *args], check, timeout).stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def exists(self, *args: str) -> bool:
        proc = self._run([self.kubectl_bin, "get", *args, "-o", "name"], False, 60)
        if proc.returncode != 0 and "NotFound" not in proc.stderr:
            pytest.fail(f"kubectl get {' '.join(args)}: {proc.stderr}")
        return proc.returncode == 0

    def helm(self, *args: str, check: bool = True) -> str:
        proc = self._run([self.helm_bin, *args], False, 300)
        if check and proc.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}\n{self.diagnose()}")
        return proc.stdout

    def diagnose(self) -> str:
        """Pods and recent events everywhere: what a failed --wait was waiting for."""
        pods = self._run([self.kubectl_bin, "get", "pods", "-A", "-o", "wide"], False, 30)
        events = self._run(
            [self.kubectl_bin, "get", "events", "-A", "--sort-by=.lastTimestamp"], False, 30
        )
        return f"pods:\n{pods.stdout}\nevents (last 20):\n" + "\n".join(
            events.stdout.splitlines()[-20:]
        )

    def can_i(self, sa: str, ns: str, verb: str, resource: str, *extra: str) -> bool:
        """`kubectl auth can-i` as the ServiceAccount with the groups a real token carries."""
        cmd = [
            self.kubectl_bin,
            "auth",
            "can-i",
            verb,
            resource,
            *extra,
            f"--as=system:serviceaccount:{ns}:{sa}",
            "--as-group=system:serviceaccounts",
            f"--as-group=system:serviceaccounts:{ns}",
            "--as-group=system:authenticated",
        ]
        proc = self._run(cmd, False, 60)
        answer = proc.stdout.strip()
        if answer not in ("yes", "no"):
            pytest.fail(f"can-i {verb} {resource} {extra}: no answer ({proc.stderr})")
        return answer == "yes"


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    # Only the local control plane's kubeconfig, never $KUBECONFIG: this test installs and
    # deletes cluster-wide RBAC, which must not happen on a user's real cluster by accident.
    kubeconfig = str(ROOT / ".cache/cluster/kubeconfig")
    if not Path(kubeconfig).is_file():
        needed(
            f"no kubeconfig at {kubeconfig}: start the local control plane first (make cluster-up)"
        )
    helm, kubectl = _tool("helm"), _tool("kubectl")
    if helm is None or kubectl is None:
        needed("helm/kubectl not built yet in .cache/bin (make tools)")
    c = Cluster(kubeconfig, helm, kubectl)
    try:
        ready = c._run([kubectl, "get", "--raw", "/readyz"], False, 20)
    except subprocess.TimeoutExpired:
        needed(f"the apiserver of {kubeconfig} did not answer /readyz within 20s")
    if ready.returncode != 0:
        needed(f"the apiserver of {kubeconfig} is unreachable: {ready.stderr.strip()}")
    return c


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


@dataclass
class Release:
    name: str
    namespace: str
    serviceaccount: str
    cluster_role: str


def _install(cluster: Cluster, name: str, ns: str, *set_args: str) -> Release:
    args = [
        "install",
        name,
        str(CHART),
        "--namespace",
        ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        HELM_TIMEOUT,
    ]
    for pair in set_args:
        args += ["--set", pair]
    # The operator pod on a kwok fake node: its image (the chart's default tag) is never
    # built for these tests; test_real_node.py installs the chart with the real image.
    args += ["--set-json", f"nodeSelector={json.dumps(FAKE_NODE_SELECTOR)}"]
    args += ["--set-json", f"tolerations={json.dumps([FAKE_NODE_TOLERATION])}"]
    cluster.helm(*args)
    # The chart names objects `<release>-modelservice-operator` unless the release name already
    # contains the chart name; cluster-scoped ones are prefixed with the namespace.
    full = name if "modelservice-operator" in name else f"{name}-modelservice-operator"
    return Release(name, ns, full, f"{ns}-{full}"[:63].rstrip("-"))


def _cleanup(cluster: Cluster, release: Release, *namespaces: str) -> None:
    cluster.helm(
        "uninstall",
        release.name,
        "--namespace",
        release.namespace,
        "--wait",
        "--timeout",
        HELM_TIMEOUT,
        check=False,
    )
    for ns in (release.namespace, *namespaces):
        cluster.kubectl(
            "delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False
        )


@pytest.fixture(scope="module")
def clusterwide(cluster: Cluster) -> Iterator[Release]:
    """The chart installed with default values (all namespaces) in a fresh namespace."""
    suffix = _suffix()
    release = _install(cluster, f"msvc-{suffix}", f"msvc-helm-{suffix}")
    yield release
    _cleanup(cluster, release)


def test_install_runs_the_operator_deployment(cluster: Cluster, clusterwide: Release) -> None:
    deploy = cluster.get_json("deployment", clusterwide.serviceaccount, "-n", clusterwide.namespace)
    assert deploy["status"].get("readyReplicas") == 1, deploy["status"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == clusterwide.serviceaccount
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        json.loads(
            cluster.helm("status", clusterwide.name, "-n", clusterwide.namespace, "-o", "json")
        )["info"]["status"]
        == "deployed"
    )
    notes = cluster.helm("get", "notes", clusterwide.name, "-n", clusterwide.namespace)
    assert "kubectl apply" in notes and "examples/" in notes and "kubectl get msvc" in notes
    # The chart's crds/ were installed (or were already there): the resource is served.
    assert cluster.exists("crd", "clusterkopfpeerings.kopf.dev")


# What the operator does, as (verb, resource, extra can-i args): all in some user namespace.
NEEDED = [
    ("get", MSVC),
    ("list", MSVC),
    ("watch", MSVC),
    ("patch", MSVC),
    ("patch", MSVC, "--subresource=status"),
    ("create", "deployments.apps"),
    ("patch", "deployments.apps"),
    ("watch", "deployments.apps"),
    ("create", "services"),
    ("patch", "services"),
    ("watch", "services"),
    # A removed canary's Deployment and Services (their owner lives on: no garbage collection).
    ("delete", "deployments.apps"),
    ("delete", "services"),
    ("create", "horizontalpodautoscalers.autoscaling"),
    ("patch", "horizontalpodautoscalers.autoscaling"),
    ("create", "poddisruptionbudgets.policy"),
    ("patch", "poddisruptionbudgets.policy"),
    ("create", "events"),
    ("patch", "events"),
]
# kopf's cluster-scoped discovery.
NEEDED_CLUSTER = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "namespaces"),
    ("watch", "namespaces"),
]
# What it must never do.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods", "--subresource=exec"),
    ("get", "pods", "--subresource=exec"),
    ("create", "pods", "--subresource=attach"),
    ("create", "pods", "--subresource=portforward"),
    ("create", "pods"),
    ("delete", "pods"),
    ("get", "configmaps"),
    ("create", "configmaps"),
    ("create", "statefulsets.apps"),
    ("create", "daemonsets.apps"),
    ("create", "jobs.batch"),
    ("create", "serviceaccounts"),
    ("create", "serviceaccounts", "--subresource=token"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "persistentvolumeclaims"),
    ("create", "ingresses.networking.k8s.io"),
    ("delete", MSVC),
    ("create", MSVC),
    ("update", "deployments.apps"),
    ("patch", "kopfpeerings.kopf.dev"),
    ("*", "*"),
]
FORBIDDEN_CLUSTER = [
    ("delete", "nodes"),
    ("get", "nodes"),
    ("patch", "nodes"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "namespaces"),
    ("create", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("patch", "clusterkopfpeerings.kopf.dev"),  # single replica: --standalone, no peering
    ("list", "secrets", "--all-namespaces"),
]


def test_serviceaccount_can_do_what_the_operator_needs(
    cluster: Cluster, clusterwide: Release
) -> None:
    sa, ns = clusterwide.serviceaccount, clusterwide.namespace
    denied = [
        (check, where)
        for where in ("default", f"team-{_suffix()}")
        for check in NEEDED
        if not cluster.can_i(sa, ns, check[0], check[1], *check[2:], "-n", where)
    ]
    denied += [c for c in NEEDED_CLUSTER if not cluster.can_i(sa, ns, *c)]
    denied += [
        c
        for c in [("watch", MSVC), ("list", "deployments.apps")]
        if not cluster.can_i(sa, ns, *c, "--all-namespaces")
    ]
    assert denied == [], f"{sa} lacks permissions the operator needs: {denied}"


def test_serviceaccount_cannot_do_anything_else(cluster: Cluster, clusterwide: Release) -> None:
    sa, ns = clusterwide.serviceaccount, clusterwide.namespace
    allowed = [
        check
        for check in FORBIDDEN
        if cluster.can_i(sa, ns, check[0], check[1], *check[2:], "-n", "default")
    ]
    allowed += [c for c in FORBIDDEN_CLUSTER if cluster.can_i(sa, ns, *c)]
    assert allowed == [], f"{sa} is granted more than it needs: {allowed}"

    role = cluster.get_json("clusterrole", clusterwide.cluster_role)
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), f"wildcard in {role['metadata']['name']}: {rule}"
        assert "secrets" not in rule["resources"], rule


def test_upgrade_changes_a_value(cluster: Cluster, clusterwide: Release) -> None:
    image = f"registry.local/modelservice-runtime:{_suffix()}"
    cluster.helm(
        "upgrade",
        clusterwide.name,
        str(CHART),
        "--namespace",
        clusterwide.namespace,
        "--reuse-values",
        "--set",
        f"runtimeImage={image}",
        "--wait",
        "--timeout",
        HELM_TIMEOUT,
    )
    deploy = cluster.get_json("deployment", clusterwide.serviceaccount, "-n", clusterwide.namespace)
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MODELSERVICE_RUNTIME_IMAGE"] == image
    assert deploy["status"].get("readyReplicas") == 1, deploy["status"]
    history = json.loads(
        cluster.helm("history", clusterwide.name, "-n", clusterwide.namespace, "-o", "json")
    )
    assert [h["revision"] for h in history] == [1, 2]
    assert history[-1]["status"] == "deployed"


def test_watch_namespaces_gives_namespaced_roles_only_and_uninstall_cleans_up(
    cluster: Cluster,
) -> None:
    suffix = _suffix()
    team_a, team_b, other = f"team-a-{suffix}", f"team-b-{suffix}", f"other-{suffix}"
    for ns in (team_a, team_b):  # the chart's Roles go into namespaces that must exist
        cluster.kubectl("create", "namespace", ns)
    release = Release(f"msvc-ns-{suffix}", f"msvc-helm-ns-{suffix}", "", "")
    try:
        release = _install(
            cluster,
            release.name,
            release.namespace,
            f"watchNamespaces={{{team_a},{team_b}}}",
            "replicaCount=2",
        )
        sa, ns = release.serviceaccount, release.namespace

        deploy = cluster.get_json("deployment", sa, "-n", ns)
        assert deploy["status"].get("readyReplicas") == 2, deploy["status"]

        for where in (team_a, team_b):
            assert cluster.exists("role", sa, "-n", where)
            assert cluster.exists("rolebinding", sa, "-n", where)
            assert cluster.exists("kopfpeerings.kopf.dev", "modelservice-operator", "-n", where)
            for check in [*NEEDED, ("patch", "kopfpeerings.kopf.dev")]:
                assert cluster.can_i(sa, ns, check[0], check[1], *check[2:], "-n", where), (
                    f"{sa} cannot {check} in watched namespace {where}"
                )
            for check in FORBIDDEN[:-2]:
                assert not cluster.can_i(sa, ns, check[0], check[1], *check[2:], "-n", where), (
                    f"{sa} can {check} in {where}"
                )
        # Nothing outside the listed namespaces, and nothing cluster-wide but discovery.
        for where in (other, ns, "default"):
            for check in [("create", "deployments.apps"), ("watch", MSVC), ("create", "events")]:
                assert not cluster.can_i(sa, ns, *check, "-n", where), f"{check} in {where}"
        for check in [("list", "deployments.apps"), ("watch", MSVC), ("list", "secrets")]:
            assert not cluster.can_i(sa, ns, *check, "--all-namespaces"), check
        for check in NEEDED_CLUSTER:
            assert cluster.can_i(sa, ns, *check), check

        role = cluster.get_json("clusterrole", release.cluster_role)
        assert sorted(r for rule in role["rules"] for r in rule["resources"]) == [
            "customresourcedefinitions",
            "namespaces",
        ], role["rules"]
        assert {v for rule in role["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
        bindings = cluster.get_json(
            "clusterrolebindings", "-l", f"app.kubernetes.io/instance={release.name}"
        )
        assert [b["roleRef"]["name"] for b in bindings["items"]] == [release.cluster_role]

        cluster.helm(
            "uninstall", release.name, "--namespace", ns, "--wait", "--timeout", HELM_TIMEOUT
        )
        assert not cluster.exists("deployment", sa, "-n", ns)
        assert not cluster.exists("clusterrole", release.cluster_role)
        assert not cluster.exists("clusterrolebinding", release.cluster_role)
        for where in (team_a, team_b):
            assert not cluster.exists("role", sa, "-n", where)
            assert not cluster.exists("rolebinding", sa, "-n", where)
            assert not cluster.exists("kopfpeerings.kopf.dev", "modelservice-operator", "-n", where)
        assert release.name not in cluster.helm("list", "-n", ns, "-q")
    finally:
        _cleanup(cluster, release, team_a, team_b)


def _token_kubeconfig(cluster: Cluster, sa: str, ns: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a real TokenRequest token."""
    token = cluster.kubectl("create", "token", sa, "-n", ns, "--duration=20m").strip()
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": server}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": sa}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    return path


def _wait(what: str, predicate: Callable[[], bool], seconds: float, logs: list[Path]) -> None:
    """wait_until, failing with the operators' log tails."""
    try:
        wait_until(what, predicate, timeout=seconds, interval=1)
    except AssertionError as e:
        tails = "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in logs)
        pytest.fail(f"{e}; operator logs:\n{tails}")


@dataclass
class OperatorRun:
    """The chart installed to watch one fresh namespace, and real `modelservice operator`
    processes started with the container's flags and env, authenticated as the chart's
    ServiceAccount (a TokenRequest token, no admin credentials)."""

    cluster: Cluster
    release: Release
    team: str
    tmp: Path
    processes: list[tuple[subprocess.Popen[bytes], Path]]

    def start(self) -> Path:
        kubeconfig = self.tmp / "sa-kubeconfig"
        if not kubeconfig.exists():
            _token_kubeconfig(
                self.cluster, self.release.serviceaccount, self.release.namespace, kubeconfig
            )
        deploy = self.cluster.get_json(
            "deployment", self.release.serviceaccount, "-n", self.release.namespace
        )
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        probe = free_port()
        args = [a.replace("0.0.0.0:8080", f"127.0.0.1:{probe}") for a in container["args"]]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env |= {
            "KUBECONFIG": str(kubeconfig),
            "MODELSERVICE_OPERATOR_PROBE_PORT": str(probe),
            "MODELSERVICE_OPERATOR_METRICS_PORT": str(free_port()),
        }
        log = self.tmp / f"operator-{len(self.processes)}.log"
        console = Path(sys.executable).with_name("modelservice")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(console), "operator", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | env,
                cwd=self.tmp,
            )
        self.processes.append((proc, log))
        return log

    def check_alive(self) -> None:
        for proc, log in self.processes:
            if proc.poll() is not None:
                pytest.fail(f"the operator exited {proc.returncode}:\n{log.read_text()[-4000:]}")

    def apply_modelservice(self, name: str) -> Path:
        msvc = {
            "apiVersion": "serving.modelservice.io/v1alpha1",
            "kind": "ModelService",
            "metadata": {"name": name, "namespace": self.team},
            "spec": {
                "model": {"uri": "https://models.invalid/mlp.onnx"},
                "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
            },
        }
        manifest = self.tmp / f"{name}.json"
        manifest.write_text(json.dumps(msvc))
        self.cluster.kubectl("apply", "-f", str(manifest))
        return manifest

    def stop(self) -> None:
        # Delete ModelServices while the operators still run (they hold a kopf finalizer);
        # if none is left to do it, drop the finalizers so the namespace can go.
        c = self.cluster
        c.kubectl(
            "delete", MSVC, "--all", "-n", self.team, "--wait=true", "--timeout=60s", check=False
        )
        for name in c.kubectl("get", MSVC, "-n", self.team, "-o", "name", check=False).split():
            c.kubectl(
                "patch",
                name,
                "-n",
                self.team,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
        for proc, _ in self.processes:
            stop(proc)
        _cleanup(c, self.release, self.team)


@pytest.fixture
def operator_run(
    cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorRun]:
    """An OperatorRun on a fresh install; extra `--set` pairs come from an indirect
    parametrization (`request.param`)."""
    if not (ROOT / "operator" / "modelservice_operator" / "cli.py").is_file():
        needed(
            "the operator's `modelservice operator` (modelservice_operator/cli.py) "
            "does not exist yet"
        )
    if not Path(sys.executable).with_name("modelservice").is_file():
        needed("the `modelservice` console script is not installed (pip install -e .)")
    suffix = _suffix()
    team = f"team-op-{suffix}"
    cluster.kubectl("create", "namespace", team)
    run = OperatorRun(
        cluster, Release(f"msvc-op-{suffix}", f"msvc-helm-op-{suffix}", "", ""), team, tmp_path, []
    )
    try:
        extra = getattr(request, "param", ())
        run.release = _install(
            cluster, run.release.name, run.release.namespace, f"watchNamespaces={{{team}}}", *extra
        )
        if not cluster.exists("crd", MSVC):
            needed(f"the {MSVC} CRD is not in the chart's crds/ yet (make crd)")
        yield run
    finally:
        run.stop()


REFUSED = ("forbidden", "not enough permissions", " 403")


def test_operator_reconciles_with_only_its_serviceaccount(operator_run: OperatorRun) -> None:
    """The real operator, as the chart's ServiceAccount, serves a ModelService in its watched
    namespace: its RBAC is enough for everything it does, and nothing it does is refused."""
    c, team = operator_run.cluster, operator_run.team
    log = operator_run.start()
    manifest = operator_run.apply_modelservice("rbac-check")

    def reconciled() -> bool:
        operator_run.check_alive()
        children = ["deployment", "service", "hpa", "pdb"]
        if not all(c.exists(kind, "rbac-check", "-n", team) for kind in children):
            return False
        status = c.get_json(MSVC, "rbac-check", "-n", team).get("status") or {}
        return bool(status.get("phase"))

    _wait("the ModelService's Deployment, Service, HPA, PDB and status", reconciled, 120, [log])
    # No finalizer: deletion is garbage collection's job, never blocked on the operator.
    c.kubectl("delete", "-f", str(manifest), "--wait=true", "--timeout=60s")
    text = log.read_text()
    # Our operator (not another one on the cluster) did the work, and nothing was refused.
    assert f"[{team}/rbac-check] Creation is processed: 1 succeeded" in text, text[-4000:]
    refused = [line for line in text.splitlines() if any(s in line.lower() for s in REFUSED)]
    assert refused == [], "the operator was refused by RBAC:\n" + "\n".join(refused)


@pytest.mark.parametrize("operator_run", [("replicaCount=2",)], indirect=True)
def test_two_replicas_one_active_through_kopf_peering(operator_run: OperatorRun) -> None:
    """replicaCount=2: both replicas run with the chart's `--peering`; exactly one handles a
    ModelService while the other stands by.

    kopf starts a replica paused and logs only changes: "Resuming operations" when it finds
    no peer above it, "Pausing operations in favour of" when an active replica meets a higher
    one. So the replicas start one after the other: the first, alone, resumes; the second's
    random priority (in the KopfPeering) says which one stands by, and that one's log says so
    (the first pauses) or it never resumes (the second stays as it started)."""
    c, team = operator_run.cluster, operator_run.team
    assert c.exists("kopfpeerings.kopf.dev", "modelservice-operator", "-n", team)
    resumed, paused = "Resuming operations", "Pausing operations in favour of"

    def peers() -> dict[str, Any]:
        operator_run.check_alive()
        got = c.get_json("kopfpeerings.kopf.dev", "modelservice-operator", "-n", team)
        return got.get("status") or {}

    logs = [operator_run.start()]
    _wait("the first replica, alone, to resume", lambda: resumed in logs[0].read_text(), 60, logs)
    _wait("the first replica's keep-alive", lambda: len(peers()) == 1, 60, logs)
    (first_id,) = peers()
    logs.append(operator_run.start())
    _wait("both replicas' keep-alives in the KopfPeering", lambda: len(peers()) == 2, 60, logs)
    status = peers()
    (second_id,) = set(status) - {first_id}
    first_prio, second_prio = status[first_id]["priority"], status[second_id]["priority"]
    assert first_prio != second_prio, f"both drew priority {first_prio}: kopf pauses both"
    if second_prio > first_prio:
        active, standby = logs[1], logs[0]
        _wait(
            f"the first replica to log {paused!r}", lambda: paused in logs[0].read_text(), 60, logs
        )
        _wait(
            f"the second replica to log {resumed!r}",
            lambda: resumed in logs[1].read_text(),
            60,
            logs,
        )
    else:
        active, standby = logs[0], logs[1]  # the second stays paused, as it started
    standby_seen = len(standby.read_text())
    operator_run.apply_modelservice("peering-check")
    done = f"[{team}/peering-check] Creation is processed"
    _wait(
        "the active replica to reconcile the ModelService",
        lambda: done in active.read_text(),
        60,
        logs,
    )
    later = standby.read_text()
    assert done not in later, f"the standby handled it too:\n{later[-2000:]}"
    assert resumed not in later[standby_seen:], later[-2000:]
