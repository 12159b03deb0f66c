"""Operator at scale: apply 100/500/1000 ModelServices at once to the local control plane.

For each size a fresh operator process (`modelservice operator`, scoped to a fresh
namespace) reconciles N ModelServices created as fast as 8 client threads can. Two watches
(ModelServices and Deployments, raw dicts, started before the first create so no event is
missed) record when each Deployment first exists and when each status.observedGeneration
first equals metadata.generation. Reconcile latency of one object = that moment minus the
moment its create request was sent. The operator's RSS is sampled from /proc every 0.25 s;
"steady" is its RSS 5 s after everything is reconciled. Every wait has a deadline; the
namespace is deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.servers import REPO, VENV, rss_mib
from tests.integration.nodes import on_fake_nodes

KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"
GROUP, VERSION, PLURAL = "serving.modelservice.io", "v1alpha1", "modelservices"
CRD_NAME = f"{PLURAL}.{GROUP}"
# How the operator is started; "{ns}" is replaced by the namespace it must watch.
OPERATOR_CMD = [
    str(VENV / "bin" / "modelservice"), "operator", "--standalone", "--namespace", "{ns}",
]  # fmt: skip
CREATE_THREADS = 8
STEADY_WAIT_S = 5.0


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def manifest(name: str) -> dict[str, Any]:
    """A small, valid ModelService: one replica, no autoscaling, an https model uri, its pod
    on a kwok fake node (a thousand real pods would not fit the real one)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelService",
        "metadata": {"name": name},
        "spec": on_fake_nodes(
            {"model": {"uri": "https://models.example.com/mlp.onnx"}, "replicas": 1}
        ),
    }


def preconditions() -> str | None:
    """None when the local control plane answers and the operator package exists, else why not."""
    if not KUBECONFIG.exists():
        return f"no local control plane ({KUBECONFIG} missing; run `make cluster-up`)"
    try:
        import modelservice_operator.cli
        import modelservice_operator.handlers  # noqa: F401
    except ImportError as e:
        return f"the operator package is not importable yet ({e})"
    from kubernetes import client, config

    try:
        config.load_kube_config(str(KUBECONFIG))
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as e:  # any failure to reach the API server means: skip with a note
        return f"the local control plane at {KUBECONFIG} does not answer ({type(e).__name__})"
    return None


def ensure_crd() -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api()
    try:
        ext.read_custom_resource_definition(CRD_NAME, _request_timeout=10)
        return
    except client.ApiException as e:
        if e.status != 404:
            raise
    import yaml

    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                ext.create_custom_resource_definition(doc, _request_timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(CRD_NAME, _request_timeout=10)
        conds = {c.type: c.status for c in (crd.status.conditions or [])}
        if conds.get("Established") == "True":
            return
        time.sleep(0.5)
    raise TimeoutError(f"CRD {CRD_NAME} not Established within 30 s")


EXTRA_SERVICE_CIDR = "modelservice-bench-scale"
# Inside 198.18.0.0/15 (test networks), clear of the pod range (198.18.0.0/24) and the
# cluster's own service range (198.19.0.0/16).
EXTRA_SERVICE_RANGE = "198.18.128.0/17"


def ensure_service_capacity(count: int) -> str:
    """Make room for `count` more ClusterIPs; returns a note ('' when nothing was needed).

    kube-apiserver's default Service range is 10.0.0.0/24 (254 addresses; hack/cluster-up.sh
    sets a /16), so 1000
    ModelServices (one Service each) cannot all become current on a control plane started
    without --service-cluster-ip-range. Kubernetes >= 1.33 accepts extra ranges as
    ServiceCIDR objects, so the bench adds one for its run and removes it afterwards.
    """
    from kubernetes import client

    net = client.NetworkingV1Api()
    try:
        cidrs = net.list_service_cidr(_request_timeout=10).items
    except client.ApiException as e:
        return f"could not list ServiceCIDRs (HTTP {e.status}); Service IPs may run out"
    capacity = 0
    for c in cidrs:
        for cidr in c.spec.cidrs or []:
            if ":" not in cidr:
                capacity += 2 ** (32 - int(cidr.split("/")[1])) - 2
    used = len(client.CoreV1Api().list_service_for_all_namespaces(_request_timeout=30).items)
    if capacity - used >= count + 50 or any(c.metadata.name == EXTRA_SERVICE_CIDR for c in cidrs):
        return ""
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": EXTRA_SERVICE_CIDR},
        "spec": {"cidrs": [EXTRA_SERVICE_RANGE]},
    }
    net.create_service_cidr(body, _request_timeout=10)
    return (
        f"Service IP range had room for {capacity - used} more Services; added ServiceCIDR "
        f"{EXTRA_SERVICE_CIDR} ({EXTRA_SERVICE_RANGE}) for this run"
    )


def remove_service_capacity() -> None:
    from kubernetes import client

    try:
        client.NetworkingV1Api().delete_service_cidr(EXTRA_SERVICE_CIDR, _request_timeout=10)
    except client.ApiException as e:
        if e.status != 404:
            raise


class _Watcher(threading.Thread):
    """Records the first monotonic time each object satisfied `pred`, from a raw watch."""

    def __init__(self, list_fn, pred, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.list_fn, self.pred, self.kwargs = list_fn, pred, kwargs
        self.first: dict[str, float] = {}
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.resource_version = self._relist()

    def _relist(self) -> str:
        """List now, record objects that already qualify, return the list's resourceVersion."""
        listing = self.list_fn(**self.kwargs, _request_timeout=30)
        now = time.monotonic()
        for obj in listing.get("items", []):
            name = obj["metadata"]["name"]
            if name not in self.first and self.pred(obj):
                self.first[name] = now
        return listing["metadata"]["resourceVersion"]

    def run(self) -> None:
        from kubernetes import watch

        while not self.stop_event.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.list_fn,
                    **self.kwargs,
                    resource_version=self.resource_version,
                    timeout_seconds=5,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["object"]
                    meta = obj.get("metadata", {})
                    if meta.get("resourceVersion"):
                        self.resource_version = meta["resourceVersion"]
                    name = meta.get("name")
                    fresh = event["type"] in ("ADDED", "MODIFIED") and name not in self.first
                    if fresh and self.pred(obj):
                        self.first[name] = time.monotonic()
                    if self.stop_event.is_set():
                        break
            except Exception as e:  # e.g. 410 Gone: re-list (catching up) and watch on
                self.error = f"{type(e).__name__}: {e}"[:200]
                time.sleep(0.5)
                try:
                    self.resource_version = self._relist()
                except Exception as e2:  # API briefly unreachable: retry until stopped
                    self.error = f"{type(e2).__name__}: {e2}"[:200]


def _status_current(obj: dict) -> bool:
    gen = obj.get("metadata", {}).get("generation")
    return gen is not None and obj.get("status", {}).get("observedGeneration") == gen


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop_event = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            self.peak = max(self.peak, rss_mib(self.pid))


def _start_operator(ns: str, log: Path) -> subprocess.Popen:
    argv = [a.replace("{ns}", ns) for a in OPERATOR_CMD]
    out = log.open("wb")
    return subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "KUBECONFIG": str(KUBECONFIG),
            "PYTHONUNBUFFERED": "1",
            # No fixed ports: other operators (tests, demo) may run on this machine too.
            "MODELSERVICE_OPERATOR_PROBE_PORT": "0",
            "MODELSERVICE_OPERATOR_METRICS_PORT": "0",
        },
        cwd=REPO,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _delete_namespace(ns: str, timeout_s: float) -> str:
    """Delete `ns` and wait for it to go; returns '' or a note on what was left."""
    from kubernetes import client

    core = client.CoreV1Api()
    try:
        core.delete_namespace(ns, _request_timeout=30)
    except client.ApiException as e:
        if e.status == 404:
            return ""
        return f"namespace delete failed: HTTP {e.status}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            core.read_namespace(ns, _request_timeout=10)
        except client.ApiException as e:
            if e.status == 404:
                return ""
        time.sleep(1)
    return f"namespace {ns} still terminating after {timeout_s:.0f} s"


def _clear_finalizers(ns: str) -> None:
    """Last resort after the operator stopped: drop finalizers on our own leftover objects."""
    from kubernetes import client

    api = client.CustomObjectsApi()
    items = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=30)
    for obj in items.get("items", []):
        if obj["metadata"].get("finalizers"):
            api.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, obj["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )  # fmt: skip


def measure(count: int, work_dir: Path, profile: bool = False) -> dict[str, Any]:
    from kubernetes import client

    ns = f"bench-scale-{count}-{int(time.time()) % 100000}"
    timeout_s = 30.0 + 0.15 * count
    result: dict[str, Any] = {"count": count, "namespace": ns, "timeout_s": timeout_s}
    core, api = client.CoreV1Api(), client.CustomObjectsApi()
    core.create_namespace({"metadata": {"name": ns}}, _request_timeout=30)
    proc = _start_operator(ns, work_dir / f"operator-{count}.log")
    sampler = _RssSampler(proc.pid)
    sampler.start()
    watchers: list[_Watcher] = []
    try:
        # The operator is up when it has reconciled one probe object.
        probe = manifest("probe")
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, probe)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited with code {proc.returncode}; see {work_dir}")
            obj = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "probe")
            if _status_current(obj):
                break
            time.sleep(0.5)
        else:
            raise TimeoutError("operator did not reconcile the probe ModelService within 60 s")
        result["idle_rss_mib"] = rss_mib(proc.pid)
        if profile:  # py-spy the operator while it reconciles (bench/profile_runtime.py reads it)
            stacks = work_dir / f"operator-{count}.pyspy.txt"
            spy = [
                str(VENV / "bin" / "py-spy"), "record", "--pid", str(proc.pid), "--format",
                "raw", "--function", "--nonblocking", "--rate", "100", "--duration",
                str(int(timeout_s)), "--output", str(stacks),
            ]  # fmt: skip
            subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result["profile"] = str(stacks)

        msvc = _Watcher(
            api.list_namespaced_custom_object,
            _status_current,
            group=GROUP, version=VERSION, namespace=ns, plural=PLURAL,
        )  # fmt: skip
        deps = _Watcher(
            api.list_namespaced_custom_object,
            lambda obj: True,
            group="apps", version="v1", namespace=ns, plural="deployments",
        )  # fmt: skip
        watchers = [msvc, deps]
        for w in watchers:
            w.start()
        names = [f"msvc-{i:04d}" for i in range(count)]
        sent: dict[str, float] = {}

        def create(name: str) -> None:
            sent[name] = time.monotonic()
            api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest(name))

        t0 = time.monotonic()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(create, names))
        result["create_s"] = time.monotonic() - t0
        deadline = t0 + timeout_s
        wanted = set(names)
        while time.monotonic() < deadline and not (
            wanted <= deps.first.keys() and wanted <= msvc.first.keys()
        ):
            if proc.poll() is not None:
                result["note"] = f"operator exited with code {proc.returncode}"
                break
            time.sleep(0.25)
        done_deps = wanted & deps.first.keys()
        done_msvc = wanted & msvc.first.keys()
        if done_deps == wanted:
            result["deployments_s"] = max(deps.first[n] for n in names) - t0
        if done_msvc == wanted:
            result["reconciled_s"] = max(msvc.first[n] for n in names) - t0
        if msvc.error or deps.error:
            result["watch_errors"] = [e for e in (msvc.error, deps.error) if e]
        if done_deps != wanted or done_msvc != wanted:
            result.setdefault(
                "note",
                f"after {timeout_s:.0f} s: {len(done_deps)}/{count} Deployments, "
                f"{len(done_msvc)}/{count} statuses current",
            )
        # Objects never reconciled count as infinitely slow: percentiles are over all N.
        latencies = [msvc.first[n] - sent[n] if n in done_msvc else float("inf") for n in names]
        result["reconcile_p50_s"] = _percentile(latencies, 50)
        result["reconcile_p99_s"] = _percentile(latencies, 99)
        if proc.poll() is None:
            time.sleep(STEADY_WAIT_S)
            result["steady_rss_mib"] = rss_mib(proc.pid)
            result["peak_rss_mib"] = max(sampler.peak, rss_mib(proc.pid, "VmHWM"))
    except Exception as e:  # a failed size is reported, and the next size still runs
        result["note"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        for w in watchers:
            w.stop_event.set()
        sampler.stop_event.set()
        # Cleanup is best effort and must never leave the operator running: the shared
        # control plane may be restarted by other jobs at any moment.
        try:
            left = _delete_namespace(ns, timeout_s=90) if proc.poll() is None else "operator gone"
        except Exception as e:
            left = f"namespace delete: {type(e).__name__}"
        finally:
            _stop(proc)
        if left:
            try:
                _clear_finalizers(ns)
                left = _delete_namespace(ns, timeout_s=30)
            except Exception as e:
                left = f"cleanup of {ns} failed: {type(e).__name__}"
        if left:
            result["cleanup"] = left
    return result


def run(sizes: list[int], work_dir: Path) -> dict[str, Any]:
    """Measure each size in turn, or explain why the operator-scale part was skipped."""
    why_not = preconditions()
    if why_not:
        print(f"operator scale: skipped: {why_not}", flush=True)
        return {"skipped": why_not}
    work_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"method": (__doc__ or "").split("\n\n", 1)[1].replace("\n", " ")}
    out["sizes"] = []
    try:
        out["service_cidr_note"] = ensure_service_capacity(max(sizes))
    except Exception as e:  # best effort: without it, sizes above ~250 cannot complete
        out["service_cidr_note"] = f"could not add a ServiceCIDR: {type(e).__name__}"
    for count in sizes:
        gone = preconditions()
        if gone:
            out["sizes"].append({"count": count, "note": f"not run: {gone}"})
            continue
        print(f"operator scale: {count} ModelServices ...", flush=True)
        try:
            ensure_crd()
            res = measure(count, work_dir)
        except Exception as e:  # the API server went away between sizes, or similar
            res = {"count": count, "note": f"failed: {type(e).__name__}: {e}"[:300]}
        print(f"  {res}", flush=True)
        out["sizes"].append(res)
    if out["service_cidr_note"].startswith("Service IP range"):
        try:
            remove_service_capacity()
        except Exception as e:  # the ServiceCIDR is deleted once its last IP is released
            out["service_cidr_note"] += f" (removal failed: {type(e).__name__})"
    return out
