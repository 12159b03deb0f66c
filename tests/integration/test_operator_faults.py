"""Operator faults against the real local control plane (issue 6, operator half).

- The operator SIGKILLed by PID in the middle of reconciling a batch of ModelServices, then
  started again: everything converges, no duplicate or orphaned children.
- kube-apiserver restarted while the operator runs: it recovers by itself and reconciles
  what changed after the restart.
- Concurrent edits: fields other managers own on the children survive a reconcile; fields
  the operator owns are taken back.

The kill and restart tests run their own operator (`run_operator` from conftest.py) watching
a namespace outside the session operator's glob, so only the process under test reconciles.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    NAMESPACE_PREFIX,
    REPO_ROOT,
    TEST_RUNTIME_IMAGE,
    Kubectl,
    OperatorProcess,
    is_current,
    msvc,
    run_operator,
    wait_phase,
    wait_until,
)
from tests.needs import needed

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MANAGED_BY = "app.kubernetes.io/managed-by=modelservice-operator"
CLUSTER_DIR = REPO_ROOT / ".cache" / "cluster" / "kwok" / "clusters" / "modelservice"
CHILD_KINDS = ("deployments", "services", "poddisruptionbudgets", "horizontalpodautoscalers")


# --- helpers shared by the operator reliability/security tests -----------------------------


def apply_list(k: Kubectl, ns: str, items: list[dict[str, Any]]) -> None:
    k.apply({"apiVersion": "v1", "kind": "List", "items": items}, ns)


@contextlib.contextmanager
def own_namespace(k: Kubectl, prefix: str) -> Iterator[str]:
    """A namespace outside the session operator's glob (only our own operator sees it)."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    k.run("create", "namespace", ns)
    try:
        yield ns
    finally:
        # ModelServices carry no finalizer: namespace deletion cannot hang on the operator.
        k.run("delete", "namespace", ns, "--wait=false", check=False)


def children_problems(k: Kubectl, ns: str, expected: dict[str, dict[str, Any]]) -> list[str]:
    """Every child of `expected` (name -> ModelService) exactly once per kind, each with one
    owner reference to the right ModelService; no other managed child in the namespace."""
    problems: list[str] = []
    for kind in CHILD_KINDS:
        items = k.list(kind, ns, MANAGED_BY)
        names = [i["metadata"]["name"] for i in items]
        want = {
            n
            for n, o in expected.items()
            if kind != "horizontalpodautoscalers" or o["spec"].get("autoscaling")
        }
        if sorted(names) != sorted(want):
            extra = sorted(set(names) - want)
            missing = sorted(want - set(names))
            dupes = sorted({n for n in names if names.count(n) > 1})
            problems.append(f"{kind}: missing {missing}, orphaned {extra}, duplicated {dupes}")
        for item in items:
            name = item["metadata"]["name"]
            refs = item["metadata"].get("ownerReferences") or []
            owner = expected.get(name)
            if owner is None:
                continue
            ok = (
                len(refs) == 1
                and refs[0]["kind"] == "ModelService"
                and refs[0]["name"] == name
                and refs[0]["uid"] == owner["metadata"]["uid"]
                and refs[0].get("controller") is True
            )
            if not ok:
                problems.append(f"{kind}/{name}: ownerReferences {refs}")
    return problems


# --- kill the operator mid-batch -------------------------------------------------------------


BATCH = 20


def _batch(generation_replicas: int = 1) -> list[dict[str, Any]]:
    """Twenty ModelServices: even ones autoscaled (4 children), odd ones fixed (3)."""
    out = []
    for i in range(BATCH):
        if i % 2 == 0:
            out.append(msvc(f"m{i:02d}", autoscaling={"minReplicas": 1, "maxReplicas": 3}))
        else:
            out.append(msvc(f"m{i:02d}", replicas=generation_replicas))
    return out


def _applied_count(op: OperatorProcess) -> int:
    text = op.log_path.read_text(errors="replace") if op.log_path.exists() else ""
    return text.count("applied Deployment")


def test_operator_killed_mid_batch_converges_without_duplicates(
    kctl: Kubectl, modelservice_crd: str, tmp_path: Path
) -> None:
    with own_namespace(kctl, "msvc-fault-kill") as ns:
        with run_operator(kctl.kubeconfig, ns, tmp_path / "first.log") as first:
            # kubectl creates the batch one by one (seconds) while the operator works on it.
            applying = subprocess.Popen(
                [kctl.binary, "--kubeconfig", str(kctl.kubeconfig), "apply", "-n", ns, "-f", "-"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            assert applying.stdin is not None
            applying.stdin.write(json.dumps({"kind": "List", "apiVersion": "v1",
                                             "items": _batch()}).encode())  # fmt: skip
            applying.stdin.close()
            # SIGKILL as soon as a few ModelServices are through: the rest are queued or in
            # the middle of their applies (kopf's progress annotations half-written).
            wait_until(
                "the first operator to finish 2 reconciles of the batch",
                lambda: _applied_count(first) >= 2 or first.proc.poll() is not None,
                timeout=120,
                interval=0.05,
            )
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait(timeout=10)
            done_before = _applied_count(first)
            assert applying.wait(timeout=120) == 0, applying.stderr and applying.stderr.read()
        current = sum(is_current(o) for o in kctl.list("msvc", ns))
        deployments = len(kctl.list("deployments", ns, MANAGED_BY))
        print(
            f"killed after {done_before} reconciles logged; {current}/{BATCH} Ready+current, "
            f"{deployments} Deployments existed"
        )
        assert done_before < BATCH, "the operator finished the batch before it was killed"

        # While it is down: scale the fixed ones (a change it must catch up with).
        apply_list(kctl, ns, _batch(generation_replicas=2))

        with run_operator(kctl.kubeconfig, ns, tmp_path / "second.log") as second:
            started = time.monotonic()

            progress: dict[str, float] = {}

            def all_ready() -> list[dict[str, Any]] | None:
                items = kctl.list("msvc", ns)
                for o in items:
                    if is_current(o):
                        progress.setdefault(o["metadata"]["name"], time.monotonic() - started)
                if len(items) == BATCH and all(map(is_current, items)):
                    return items
                return None

            try:
                items = wait_until(
                    f"all {BATCH} ModelServices Ready at their current generation after restart",
                    all_ready,
                    timeout=240,
                    interval=2,
                )
            except AssertionError:
                print(f"became current (s after restart): {progress}")
                for o in kctl.list("msvc", ns):
                    if not is_current(o):
                        print(o["metadata"]["name"], json.dumps(o.get("status"))[:400])
                raise
            print(f"converged {time.monotonic() - started:.1f}s after the restart: {progress}")
            owners = {o["metadata"]["name"]: o for o in items}
            assert children_problems(kctl, ns, owners) == []
            for name, obj in owners.items():
                dep = kctl.get("deployment", name, ns)
                want = 2 if not obj["spec"].get("autoscaling") else None
                if want is not None:
                    assert dep["spec"]["replicas"] == want, name
                    assert obj["status"]["readyReplicas"] == want, name
                # The restart re-applied the same template: no second rollout (one ReplicaSet).
                rs = kctl.list("replicasets", ns, f"app.kubernetes.io/instance={name}")
                assert len(rs) == 1, f"{name}: {[r['metadata']['name'] for r in rs]}"
            assert second.proc.poll() is None


# --- restart kube-apiserver -------------------------------------------------------------------


def _pid(component: str) -> int:
    return int((CLUSTER_DIR / "pids" / f"{component}.pid").read_text().strip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "gone"


def _cmdline(pid: int) -> list[str]:
    return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]


def _relaunch(component: str, argv: list[str]) -> int:
    """Start a control-plane component again exactly as kwokctl did (same argv, working
    directory and log file, its own session so it outlives the test); record its PID where
    kwokctl and hack/cluster-down.sh look for it."""
    log = CLUSTER_DIR / "logs" / f"{component}.log"
    with open(os.devnull, "rb") as devnull, log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=CLUSTER_DIR, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    (CLUSTER_DIR / "pids" / f"{component}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def _readyz(k: Kubectl) -> bool:
    try:
        return k.run("get", "--raw", "/readyz", check=False, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _heal(k: Kubectl, argvs: dict[str, list[str]]) -> list[str]:
    """Bring back any component that died (leader election lost while the apiserver was
    away); as the last resort, hack/cluster-up.sh. Returns what was done."""
    done = []
    for component, argv in argvs.items():
        if not _alive(_pid(component)):
            _relaunch(component, argv)
            done.append(f"relaunched {component}")
    if not _readyz(k):
        with contextlib.suppress(AssertionError):
            wait_until("the apiserver /readyz after healing", lambda: _readyz(k), timeout=60)
    if not _readyz(k):
        subprocess.run([str(REPO_ROOT / "hack" / "cluster-up.sh")], check=True, timeout=360)
        done.append("ran hack/cluster-up.sh")
    return done


@pytest.fixture
def control_plane_argv(kctl: Kubectl) -> Iterator[dict[str, list[str]]]:
    """Command lines of every component, read from /proc before the test disturbs them;
    after the test, anything that died is started again."""
    components = [p.stem for p in (CLUSTER_DIR / "pids").glob("*.pid")]
    if not components:
        needed(f"no kwokctl pid files under {CLUSTER_DIR} (not the binary-runtime cluster)")
    argvs = {c: _cmdline(_pid(c)) for c in components}
    for c, argv in argvs.items():
        cwd = os.readlink(f"/proc/{_pid(c)}/cwd")
        if not argv or Path(cwd) != CLUSTER_DIR:
            needed(f"{c} (pid {_pid(c)}, cwd {cwd}) is not this cluster's process")
    yield argvs
    healed = _heal(kctl, argvs)
    if healed:
        print("control plane healed after the test: " + ", ".join(healed))


def test_apiserver_restart_operator_recovers_by_itself(
    kctl: Kubectl, modelservice_crd: str, control_plane_argv: dict[str, list[str]], tmp_path: Path
) -> None:
    argv = control_plane_argv["kube-apiserver"]
    with (
        own_namespace(kctl, "msvc-fault-api") as ns,
        run_operator(kctl.kubeconfig, ns, tmp_path / "operator.log") as op,
    ):
        kctl.apply(msvc("before", replicas=1), ns)
        wait_phase(kctl, ns, "before", "Ready")

        old = _pid("kube-apiserver")
        t0 = time.monotonic()
        os.kill(old, signal.SIGTERM)
        try:
            wait_until(f"kube-apiserver pid {old} to exit", lambda: not _alive(old), timeout=10)
        except AssertionError:
            os.kill(old, signal.SIGKILL)
            wait_until(f"kube-apiserver pid {old} to die", lambda: not _alive(old), timeout=10)
        new = _relaunch("kube-apiserver", argv)
        wait_until(f"the restarted kube-apiserver (pid {new}) /readyz", lambda: _readyz(kctl),
                   timeout=120, interval=0.5)  # fmt: skip
        downtime = time.monotonic() - t0
        # Controllers that lost leader election while it was away exit; bring them back so
        # Deployments and pods keep working (this is the cluster's recovery, not the
        # operator's, which must need nothing).
        healed = _heal(kctl, control_plane_argv)
        print(f"apiserver down {downtime:.1f}s; healed: {healed or 'nothing'}")
        assert op.proc.poll() is None, f"operator died:\n{op.log_tail()}"

        started = time.monotonic()
        kctl.apply(msvc("after", autoscaling={"minReplicas": 1, "maxReplicas": 2}), ns)
        kctl.apply(msvc("before", replicas=2), ns)
        try:
            wait_phase(kctl, ns, "after", "Ready", timeout=240)
            before = wait_phase(kctl, ns, "before", "Ready", timeout=120)
        except AssertionError:
            print(op.log_tail(80))
            raise
        print(f"reconciled both {time.monotonic() - started:.1f}s after the restart")
        assert before["status"]["readyReplicas"] == 2
        assert kctl.get("hpa", "after", ns)["spec"]["maxReplicas"] == 2
        owners = {o["metadata"]["name"]: o for o in kctl.list("msvc", ns)}
        assert children_problems(kctl, ns, owners) == []
        assert op.proc.poll() is None, "the operator must recover without being restarted"


# --- concurrent edits -------------------------------------------------------------------------


SIDECAR = {
    "name": "proxy",
    "image": "registry.invalid/mesh-proxy:1",
    "env": [{"name": "MESH_MODE", "value": "strict"}],
    "securityContext": {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    },
}


def _ssa(k: Kubectl, ns: str, manager: str, body: dict[str, Any]) -> None:
    """Server-side apply as another controller (its own field manager)."""
    k.run(
        "apply", "--server-side", f"--field-manager={manager}", "-n", ns, "-f", "-",
        stdin=json.dumps(body),
    )  # fmt: skip


def _container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_concurrent_edits_survive_and_owned_fields_are_restored(
    kctl: Kubectl, msvc_namespace: str, modelservice_operator: OperatorProcess
) -> None:
    ns, name = msvc_namespace, "shared"
    kctl.apply(msvc(name, replicas=1), ns)
    wait_phase(kctl, ns, name, "Ready")

    # Another controller (a mesh injector, say) owns a sidecar with its own env, an env var
    # on our runtime container, a label and an annotation on the Deployment.
    _ssa(kctl, ns, "mesh-injector", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"mesh.example.com/injected": "true"},
                     "annotations": {"mesh.example.com/revision": "r1"}},
        "spec": {"selector": {"matchLabels": {
                     "app.kubernetes.io/name": "modelservice-runtime",
                     "app.kubernetes.io/instance": name}},
                 "template": {"spec": {"containers": [
                     SIDECAR,
                     {"name": "runtime", "env": [{"name": "MESH_PORT", "value": "15001"}]},
                 ]}}},
    })  # fmt: skip
    # A user annotates and labels the Service with kubectl (manager kubectl-annotate/-label).
    kctl.run("annotate", "service", name, "-n", ns, "example.com/owner=team-ml")
    kctl.run("label", "service", name, "-n", ns, "example.com/tier=gold")
    kctl.run("annotate", "pdb", name, "-n", ns, "example.com/reviewed=yes")

    # Fields the operator owns, edited by hand: restored (drift repair or the next apply).
    kctl.run(
        "patch", "service", name, "-n", ns, "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9999}]',
    )  # fmt: skip
    kctl.run("patch", "pdb", name, "-n", ns, "--type=merge", "-p", '{"spec":{"maxUnavailable":3}}')
    wait_until(
        "the Service targetPort and PDB maxUnavailable taken back by the operator",
        lambda: (
            kctl.get("service", name, ns)["spec"]["ports"][0]["targetPort"] == "http"
            and kctl.get("pdb", name, ns)["spec"]["maxUnavailable"] == 1
        ),
        timeout=30,
    )

    # A spec change makes the operator apply everything again (and roll the pods).
    kctl.apply(msvc(name, replicas=2, runtime={"batching": {"maxBatchSize": 8}}), ns)
    obj = wait_phase(kctl, ns, name, "Ready", timeout=120)
    assert obj["status"]["readyReplicas"] == 2

    dep = kctl.get("deployment", name, ns)
    meta = dep["metadata"]
    assert meta["labels"]["mesh.example.com/injected"] == "true"
    assert meta["annotations"]["mesh.example.com/revision"] == "r1"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelservice-operator"
    proxy = _container(dep, "proxy")
    assert proxy["env"] == SIDECAR["env"] and proxy["image"] == SIDECAR["image"]
    runtime = _container(dep, "runtime")
    assert {"name": "MESH_PORT", "value": "15001"} in runtime.get("env", [])
    assert runtime["image"] == TEST_RUNTIME_IMAGE
    cmd = runtime["command"]
    assert cmd[cmd.index("--max-batch-size") + 1] == "8"
    assert dep["spec"]["replicas"] == 2

    svc = kctl.get("service", name, ns)
    assert svc["metadata"]["annotations"]["example.com/owner"] == "team-ml"
    assert svc["metadata"]["labels"]["example.com/tier"] == "gold"
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pdb = kctl.get("pdb", name, ns)
    assert pdb["metadata"]["annotations"]["example.com/reviewed"] == "yes"
    assert pdb["spec"]["maxUnavailable"] == 1

    # No fight: with the other managers' fields in place the children settle (no drift
    # repair ping-pong bumping the Deployment's generation). kopf handles one Deployment's
    # events in order, so a drift of ours seen repaired is a barrier: by then every earlier
    # event was handled, and the generation moved by exactly our change and its repair.
    generation = kctl.get("deployment", name, ns)["metadata"]["generation"]
    _await_repaired_image_drift(kctl, modelservice_operator, ns, name)
    dep = kctl.get("deployment", name, ns)
    assert dep["metadata"]["generation"] == generation + 2, "our drift + its repair, no more"
    assert _container(dep, "proxy")["image"] == SIDECAR["image"], "the sidecar stayed"


def _restored_lines(op: OperatorProcess, ns: str, name: str) -> list[str]:
    log = op.log_path.read_text(errors="replace")
    return [ln for ln in log.splitlines() if f"[{ns}/{name}] restored Deployment" in ln]


def _logged_at(line: str) -> datetime.datetime:
    """The timestamp of an operator log line: '[2026-12-02 06:53:54,003] kopf...'."""
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def _await_repaired_image_drift(kctl: Kubectl, op: OperatorProcess, ns: str, name: str) -> None:
    """Change the runtime image behind the operator's back and wait for it to be restored,
    and for the operator to have logged the repair: it logs after the apply returns, so a
    test that saw the image restored could read the log a moment before that line (a CI
    run did)."""
    logged_before = len(_restored_lines(op, ns, name))
    kctl.run("set", "image", f"deployment/{name}", "runtime=drift.invalid/x:1", "-n", ns)
    wait_until(
        f"the operator to restore the runtime image of Deployment {ns}/{name}",
        lambda: (
            _container(kctl.get("deployment", name, ns), "runtime")["image"] == TEST_RUNTIME_IMAGE
        ),
        timeout=30,
    )
    wait_until(
        f"the operator to log its repair of Deployment {ns}/{name}",
        lambda: len(_restored_lines(op, ns, name)) > logged_before,
        timeout=10,
    )


def test_fields_of_other_managers_are_not_treated_as_drift(
    kctl: Kubectl, msvc_namespace: str, modelservice_operator: OperatorProcess
) -> None:
    """Found by this test: a sidecar another manager added counted as drift (lists compared
    by length), so every Deployment event re-applied and posted DriftRepaired; fixed in
    drift.contains() (named entries matched by name)."""
    ns, name = msvc_namespace, "sidecar"
    kctl.apply(msvc(name, replicas=1), ns)
    wait_phase(kctl, ns, name, "Ready")
    before = len(_restored_lines(modelservice_operator, ns, name))
    _ssa(kctl, ns, "mesh-injector", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {
                     "app.kubernetes.io/name": "modelservice-runtime",
                     "app.kubernetes.io/instance": name}},
                 "template": {"spec": {"containers": [SIDECAR]}}},
    })  # fmt: skip
    wait_phase(kctl, ns, name, "Ready", timeout=60)
    # Status-only changes of the Deployment (a label here) are ordinary watch events.
    for i in range(3):
        kctl.run("label", "deployment", name, "-n", ns, f"example.com/poke={i}", "--overwrite")
    # A real drift after the pokes: once it is repaired, the pokes were handled (kopf handles
    # one object's events in order). A repair logged before that drift was made answered a
    # poke: futile. (One drift may be repaired twice: a status event still carrying it.)
    drift_made = datetime.datetime.now()
    _await_repaired_image_drift(kctl, modelservice_operator, ns, name)
    restored = _restored_lines(modelservice_operator, ns, name)[before:]
    futile = [ln for ln in restored if _logged_at(ln) < drift_made]
    assert futile == [], f"{len(futile)} futile drift repairs, e.g. {futile[:1]}"


def _indexed_modelservices(op: OperatorProcess) -> int:
    """How many ModelServices the operator's index holds (kopf's /healthz probe)."""
    url = f"http://127.0.0.1:{op.probe_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(json.loads(resp.read())["modelservices"])


def test_namespace_deletion_is_not_fought_as_drift(
    kctl: Kubectl, modelservice_operator: OperatorProcess
) -> None:
    """Found by the operator-scale benchmark: deleting a namespace deletes the children
    while their ModelService still exists, and the operator tried to restore every one of
    them (403, namespace terminating), logging a warning per child."""
    ns = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
    kctl.run("create", "namespace", ns)
    try:
        apply_list(kctl, ns, [msvc(f"gone-{i}", replicas=1) for i in range(3)])
        for i in range(3):
            wait_phase(kctl, ns, f"gone-{i}", "Ready")
        kctl.run("delete", "namespace", ns, "--wait=true", "--timeout=90s", timeout=120)
        # No sleep stands in for "the operator has seen it": deletion finished (--wait) is
        # the signal (test_deleted_namespace_leaves_the_operator_index checks the index).
    finally:
        kctl.run("delete", "namespace", ns, "--wait=false", check=False)
    log = modelservice_operator.log_path.read_text(errors="replace").splitlines()
    fought = [ln for ln in log if f"[{ns}/" in ln and "restore" in ln]
    assert fought == [], f"{len(fought)} restore attempts during namespace deletion: {fought[:2]}"


LEFT = 8


def test_deleted_namespace_leaves_the_operator_index(
    kctl: Kubectl, modelservice_operator: OperatorProcess
) -> None:
    """Found by this test (intermittent): kopf stops a namespace's watch streams as the
    namespace goes, and the DELETED events it had not processed by then never reached its
    indexes, which kept the ModelServices for good. handlers.namespace_event (purge.py) purges them;
    its log line says when the purge was what dropped them."""
    ns = f"{NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
    kctl.run("create", "namespace", ns)
    try:
        # Several, with children and pods: their DELETED events queue behind the children's
        # when the namespace goes, which is when kopf used to lose them.
        apply_list(kctl, ns, [msvc(f"left-{i}", replicas=1) for i in range(LEFT)])
        for i in range(LEFT):
            wait_phase(kctl, ns, f"left-{i}", "Ready")
        # kopf caches /healthz for 10 s: wait until the count it shows has the LEFT in it, or
        # the drop below would be measured from a stale number.
        wait_until(
            f"the operator's /healthz 'modelservices' to count the {LEFT} in namespace {ns}",
            lambda: _indexed_modelservices(modelservice_operator) >= LEFT,
            timeout=30,
        )
        indexed = _indexed_modelservices(modelservice_operator)
        kctl.run("delete", "namespace", ns, "--wait=true", "--timeout=90s", timeout=120)
        wait_until(
            f"the operator's /healthz 'modelservices' to drop from {indexed} to {indexed - LEFT} "
            f"once namespace {ns} is gone",
            lambda: _indexed_modelservices(modelservice_operator) == indexed - LEFT,
            timeout=30,
        )
        purged = [
            ln
            for ln in modelservice_operator.log_path.read_text(errors="replace").splitlines()
            if f"namespace {ns} is gone: dropped" in ln
        ]
        print(f"dropped by the purge (kopf missed the DELETED events): {purged or 'nothing'}")
    finally:
        kctl.run("delete", "namespace", ns, "--wait=false", check=False)
