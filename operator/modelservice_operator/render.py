"""Pure functions: validated spec -> child manifests (Deployment, Service, HPA, PDB).

Nothing here talks to the API; handlers adopt (owner reference) and apply what these return.
Every manifest is a complete server-side-apply intent: fields left out are fields the
operator does not own (notably Deployment `spec.replicas` while an HPA owns the count).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelservice_cli import fetch_flags, runtime_paths, serve_flags

from modelservice_operator import FIELD_MANAGER, GROUP
from modelservice_operator.spec import GrpcSpec, ModelServiceSpec

APP_NAME = "modelservice-runtime"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
# Which revision a pod belongs to (primary, or canary: revisions.py). Only on the pod
# template and in the per-revision selectors: the primary Deployment's selector is
# immutable and stays as it was before canaries existed.
REVISION_LABEL = f"{GROUP}/revision"
PRIMARY = "primary"

HTTP_PORT = 8080
SERVICE_PORT = 80
MODEL_DIR = "/models"
MODEL_FILE = f"{MODEL_DIR}/model.onnx"
# A model in several files lands as this folder (fetch renames the whole set into place,
# and the emptyDir's mount point itself cannot be renamed); serve finds its model.onnx.
MODEL_SET_DIR = f"{MODEL_DIR}/model"
PVC_MOUNT = "/mnt/model-pvc"
CACHE_MOUNT = "/var/cache/modelservice"
VERIFY_DIR = "/verify"
# The startup probe asks every second, so a pod is Ready within about a second of its
# model loading (kubelet runs the readiness probe at once when startup passes); its
# failure threshold then counts seconds of spec.runtime.startupTimeoutSeconds.
STARTUP_PROBE_PERIOD_SECONDS = 1
GPU_TOLERATION_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
RUN_AS_USER = 65532  # the runtime image's numeric USER (runtime/Dockerfile)
PRESTOP_SLEEP_SECONDS = 5
TERMINATION_GRACE_SECONDS = 45
FETCH_CONTAINER = "model-fetch"
RUNTIME_CONTAINER = "runtime"
# Neither container writes /dev/termination-log: with this policy a container that fails
# leaves its last log lines (kubelet keeps up to 80 lines / 2 KiB) in its status, where
# the operator reads why it failed ("sha256 mismatch ...") and reports it (status.py).
TERMINATION_MESSAGE_POLICY = "FallbackToLogsOnError"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a ModelService's pods (immutable in the Deployment selector)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


def labels(name: str) -> dict[str, str]:
    """Labels every child carries: the app.kubernetes.io name, instance and managed-by."""
    return {**selector_labels(name), LABEL_MANAGED_BY: FIELD_MANAGER}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def service_url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local"


def spec_hash(spec: ModelServiceSpec) -> str:
    """Hash of everything that shapes the pods (ModelServiceSpec.pod_template_hash, computed
    once per parsed spec): the pod template's SPEC_HASH_ANNOTATION."""
    return spec.pod_template_hash


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(name)}


def _model_path(spec: ModelServiceSpec) -> str:
    """What the runtime serves: the claim's path in place, else what the fetch wrote."""
    pvc = spec.model.pvc_claim_and_path
    if pvc:
        return f"{PVC_MOUNT}/{pvc[1]}"
    return MODEL_SET_DIR if fetch_flags.names_a_set(spec.model.uri) else MODEL_FILE


def _restricted_container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cpu_cores(quantity: int | str) -> float:
    """A CPU quantity ("500m", "2", 1.5) in cores."""
    text = str(quantity)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


@dataclass(frozen=True)
class GpuPlacement:
    """Everything a GPU request changes in the pod, decided in `gpu_placement` alone."""

    limits: dict[str, str] = field(default_factory=dict)  # the runtime container's only
    toleration: dict[str, str] | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    execution_provider: str = "cpu"

    @property
    def gpu(self) -> bool:
        return bool(self.limits)


def gpu_placement(spec: ModelServiceSpec) -> GpuPlacement:
    """A GPU request adds the device plugin's resource limit to the runtime container (never
    to the model-fetch init container: fetching needs none), a toleration for
    nvidia.com/gpu:NoSchedule, the product nodeSelector when one is given, and the CUDA
    execution provider; `runtime_workers` then resolves --workers 0 to one."""
    gpu = spec.gpu
    if gpu is None:
        return GpuPlacement()
    return GpuPlacement(
        limits={gpu.resource_name: str(gpu.count)},
        toleration={"key": GPU_TOLERATION_KEY, "operator": "Exists", "effect": "NoSchedule"},
        node_selector={GPU_PRODUCT_LABEL: gpu.product} if gpu.product else {},
        execution_provider="cuda",
    )


def _pod_cpus(spec: ModelServiceSpec) -> int:
    """Whole CPUs of the pod: its CPU limit, else its request, rounded up; 1 if neither."""
    res = spec.resources
    cpu = res.limits.get("cpu", res.requests.get("cpu"))
    if cpu is None:
        return 1
    try:
        return max(1, math.ceil(cpu_cores(cpu)))
    except ValueError:  # an exotic quantity form ("1e3"): one worker is always safe
        return 1


def runtime_workers(spec: ModelServiceSpec) -> int:
    """spec.runtime.workers, with 0 resolved here rather than by the runtime: in a pod with
    no CPU limit the runtime would see every core of the node."""
    if spec.runtime.workers:
        return spec.runtime.workers
    return serve_flags.auto_workers(_pod_cpus(spec), gpu=gpu_placement(spec).gpu)


def runtime_settings(name: str, spec: ModelServiceSpec) -> dict[str, Any]:
    """The runtime's settings the operator sets on its command line (the rows of
    serve_flags.SETTINGS marked `operator`, but the auth token and the API keys: those come
    from Secrets, see _env)."""
    rt = spec.runtime
    values: dict[str, Any] = {
        "model_path": _model_path(spec),
        "name": spec.model.name or name,
        "host": "0.0.0.0",
        "port": HTTP_PORT,
        "grpc_port": rt.grpc.port if rt.grpc.enabled else 0,
        "workers": runtime_workers(spec),
        "max_batch_size": rt.batching.max_batch_size,
        "max_batch_delay_us": rt.batching.max_delay_microseconds,
        "intra_op_threads": rt.threads.intra_op,
        "inter_op_threads": rt.threads.inter_op,
        "execution_provider": gpu_placement(spec).execution_provider,
    }
    if spec.model.format != "auto":  # so existing pods' command lines stay as they were
        values["format"] = spec.model.format.value
    if rt.normalize is not None:
        values["normalize_mean"] = rt.normalize.mean
        values["normalize_std"] = rt.normalize.std
    ex = spec.explainer
    if ex is not None:  # without the block the runtime's own defaults apply
        values["explain"] = ex.enabled
        values["explain_method"] = ex.method.value
        values["explain_samples"] = ex.samples
        if ex.patch is not None:
            values["explain_patch"] = tuple(ex.patch)
    return values


def serve_command(name: str, spec: ModelServiceSpec) -> list[str]:
    """`modelservice serve` command line for the runtime container (its flags:
    modelservice_cli/serve_flags.py)."""
    return ["modelservice", "serve", *serve_flags.command_line(runtime_settings(name, spec))]


def fetch_command(spec: ModelServiceSpec) -> list[str] | None:
    """`modelservice fetch` for the init container; None when nothing needs fetching
    (a pvc:// model without a checksum is served in place)."""
    pvc = spec.model.pvc_claim_and_path
    if pvc is not None:
        if not spec.model.sha256:
            return None
        # Verify the claim's file by copying it through the checksum into scratch space.
        name = "model" if fetch_flags.names_a_set(spec.model.uri) else "model.onnx"
        cmd = ["modelservice", "fetch", f"{PVC_MOUNT}/{pvc[1]}", f"{VERIFY_DIR}/{name}"]
    else:
        cmd = ["modelservice", "fetch", spec.model.uri, _model_path(spec)]
    if spec.model.sha256:
        cmd += ["--sha256", spec.model.sha256.lower()]
    cache = spec.model.cache
    if cache is not None and pvc is None:
        cmd += fetch_flags.cache_args(CACHE_MOUNT, cache.max_bytes)
    return cmd


def _cache_volume(spec: ModelServiceSpec) -> dict[str, Any] | None:
    """The cache's volume (mounted by the init container only: the runtime serves its own
    copy in the emptyDir, which an eviction cannot take away)."""
    cache = spec.model.cache
    if cache is None or spec.model.pvc_claim_and_path is not None:
        return None
    if cache.claim_name is not None:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    # DirectoryOrCreate, not Directory: a node where the path is missing fails the fetch
    # with a message naming the cache (root-owned, not writable) instead of a pod stuck in
    # ContainerCreating with a mount error.
    return {
        "name": "model-cache",
        "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"},
    }


def _resources(spec: ModelServiceSpec, extra_limits: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if spec.resources.requests:
        res["requests"] = {k: str(v) for k, v in spec.resources.requests.items()}
    limits = {k: str(v) for k, v in spec.resources.limits.items()} | extra_limits
    if limits:
        res["limits"] = limits
    return res


def _env(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    env = [var.model_dump(by_alias=True, exclude_none=True) for var in spec.runtime.env]
    if spec.runtime.auth is not None:
        ref = spec.runtime.auth.secret_ref
        env.append({
            "name": serve_flags.BY_FIELD["auth_token"].variable,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        })  # fmt: skip
    if spec.auth is not None:  # API keys with budgets (serving/auth.py)
        keys = spec.auth.secret_ref
        env.append({
            "name": serve_flags.BY_FIELD["api_keys"].variable,
            "valueFrom": {"secretKeyRef": {"name": keys.name, "key": keys.key}},
        })  # fmt: skip
    return env


def _http_probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


@dataclass
class _Volumes:
    """The pod's volumes and where each container mounts them."""

    volumes: list[dict[str, Any]]
    runtime: list[dict[str, Any]]  # the runtime container's mounts
    fetch: list[dict[str, Any]]  # the model-fetch init container's mounts


def _volumes(spec: ModelServiceSpec) -> _Volumes:
    """Scratch /tmp for both; the model's emptyDir (written by the fetch, read-only for the
    runtime) or the claim of a pvc:// model (read-only for both, plus scratch space to
    verify a checksum in); the fetch's cache."""
    tmp = {"name": "tmp", "mountPath": "/tmp"}
    out = _Volumes([{"name": "tmp", "emptyDir": {}}], [tmp], [dict(tmp)])
    pvc = spec.model.pvc_claim_and_path
    if pvc is not None:
        out.volumes.append({
            "name": "model-pvc",
            "persistentVolumeClaim": {"claimName": pvc[0], "readOnly": True},
        })  # fmt: skip
        pvc_mount = {"name": "model-pvc", "mountPath": PVC_MOUNT, "readOnly": True}
        out.runtime.append(pvc_mount)
        out.fetch.append(pvc_mount)
        if spec.model.sha256:
            out.volumes.append({"name": "verify", "emptyDir": {}})
            out.fetch.append({"name": "verify", "mountPath": VERIFY_DIR})
    else:
        out.volumes.append({"name": "model", "emptyDir": {}})
        out.runtime.append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
        out.fetch.append({"name": "model", "mountPath": MODEL_DIR})
    cache_volume = _cache_volume(spec)
    if cache_volume is not None:
        out.volumes.append(cache_volume)
        out.fetch.append({"name": "model-cache", "mountPath": CACHE_MOUNT})
    return out


def _runtime_container(
    name: str, spec: ModelServiceSpec, image: str, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    runtime: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": serve_command(name, spec),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            *(
                [{"name": "grpc", "containerPort": spec.runtime.grpc.port, "protocol": "TCP"}]
                if spec.runtime.grpc.enabled
                else []
            ),
        ],
        "resources": _resources(spec, gpu_placement(spec).limits),
        "volumeMounts": mounts,
        "startupProbe": _http_probe(
            runtime_paths.HEALTH_READY,
            period=STARTUP_PROBE_PERIOD_SECONDS,
            failures=math.ceil(spec.runtime.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS),
            timeout=3,
        ),
        "readinessProbe": _http_probe(runtime_paths.HEALTH_READY, period=5, failures=2, timeout=3),
        "livenessProbe": _http_probe(runtime_paths.HEALTH_LIVE, period=10, failures=3, timeout=5),
        # Keep serving while endpoints controllers and proxies drop the pod, then SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": _restricted_container_security(),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
    }
    env = _env(spec)
    if env:
        runtime["env"] = env
    return runtime


def _fetch_container(
    spec: ModelServiceSpec, image: str, mounts: list[dict[str, Any]]
) -> dict[str, Any] | None:
    fetch = fetch_command(spec)
    if fetch is None:
        return None
    init: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": fetch,
        "resources": _resources(spec, {}),
        "volumeMounts": mounts,
        "securityContext": _restricted_container_security(),
        "terminationMessagePolicy": TERMINATION_MESSAGE_POLICY,
    }
    if spec.model.secret_ref is not None:
        init["envFrom"] = [{"secretRef": {"name": spec.model.secret_ref.name}}]
    return init


def render_pod_spec(name: str, spec: ModelServiceSpec, default_image: str) -> dict[str, Any]:
    image = spec.runtime.image or default_image
    placement = gpu_placement(spec)
    volumes = _volumes(spec)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_runtime_container(name, spec, image, volumes.runtime)],
        "volumes": volumes.volumes,
    }
    init = _fetch_container(spec, image, volumes.fetch)
    if init is not None:
        pod["initContainers"] = [init]
    node_selector = dict(spec.node_selector) | placement.node_selector
    tolerations = [dict(t) for t in spec.tolerations]
    if placement.toleration is not None and placement.toleration not in tolerations:
        tolerations.append(placement.toleration)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.affinity:
        pod["affinity"] = dict(spec.affinity)
    return pod


def render_deployment(
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    default_image: str,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The primary's Deployment; `replicas`, when given, is its share of a canary split by
    replica count (traffic.py) instead of spec.replicas."""
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "revisionHistoryLimit": 3,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels(name) | {REVISION_LABEL: PRIMARY},
                    "annotations": {
                        SPEC_HASH_ANNOTATION: spec_hash(spec),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": runtime_paths.METRICS,
                    },
                },
                "spec": render_pod_spec(name, spec, default_image),
            },
        },
    }
    if spec.autoscaling is None:
        # Only without an HPA: with one, leaving replicas out of the apply hands the field
        # to the HPA instead of fighting it on every reconcile.
        body["spec"]["replicas"] = spec.fixed_replicas if replicas is None else replicas
    return body


def render_service(
    name: str, namespace: str, spec: ModelServiceSpec | None = None
) -> dict[str, Any]:
    """HTTP on port 80; gRPC (h2c, so meshes and Gateways speak HTTP/2 to it) on the
    runtime's gRPC port unless spec.runtime.grpc turns it off (no spec: the default, on)."""
    grpc = spec.runtime.grpc if spec is not None else GrpcSpec()
    ports = [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]
    if grpc.enabled:
        ports.append(
            {
                "name": "grpc",
                "port": grpc.port,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {"type": "ClusterIP", "selector": selector_labels(name), "ports": ports},
    }


def render_hpa(name: str, namespace: str, spec: ModelServiceSpec) -> dict[str, Any] | None:
    a = spec.autoscaling
    if a is None:
        return None
    metrics: list[dict[str, Any]] = []
    if a.target_cpu_utilization_percentage > 0:
        metrics.append({
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": a.target_cpu_utilization_percentage,
                },
            },
        })  # fmt: skip
    metrics += [dict(m) for m in a.metrics]
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        # Never 0: the HPA takes minReplicas 0 only behind an alpha feature gate. Scale to
        # zero is the operator's (scaler.py): it sets the Deployment's replicas to 0, and an
        # HPA whose target has 0 replicas stands aside until they are set again.
        "minReplicas": max(1, a.min_replicas),
        "maxReplicas": a.max_replicas,
        "metrics": metrics,
    }
    if a.behavior:
        hpa_spec["behavior"] = dict(a.behavior)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, namespace),
        "spec": hpa_spec,
    }


# The HPA behavior's selectPolicy that turns its scale-down off.
SCALE_DOWN_OFF = "Disabled"


def scale_down_held(hpa: Mapping[str, Any] | None) -> bool:
    """Whether the HPA's scale-down is off (behavior.scaleDown.selectPolicy Disabled; the
    API server fills in Max wherever a behavior leaves it out)."""
    behavior = ((hpa or {}).get("spec") or {}).get("behavior") or {}
    return (behavior.get("scaleDown") or {}).get("selectPolicy") == SCALE_DOWN_OFF


def hold_scale_down(hpa: dict[str, Any]) -> dict[str, Any]:
    """The rendered HPA with its scale-down turned off, the rest of spec.autoscaling.behavior
    kept: while a pod of the ModelService loads its model. A ReplicaSet scaled down removes
    not-Ready pods first, so any HPA scale-down then kills the pod that is loading (kubeai#499)
    and wastes its fetch and load; its scale-up stays free."""
    behavior = dict(hpa["spec"].get("behavior") or {})
    behavior["scaleDown"] = {**(behavior.get("scaleDown") or {}), "selectPolicy": SCALE_DOWN_OFF}
    return {**hpa, "spec": {**hpa["spec"], "behavior": behavior}}


def render_pdb(name: str, namespace: str) -> dict[str, Any]:
    """At most one pod voluntarily disrupted at a time; with one replica this still lets a
    node drain (minAvailable 1 would block it forever), with more it keeps capacity."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name)},
            # A crash-looping pod must not block drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


# Every kind of child named <name>, in apply order (the HPA after its target), with how it
# is rendered (the last argument: the primary's replicas of a canary split, or None).
_Render = Callable[[str, str, ModelServiceSpec, str, "int | None"], dict[str, Any] | None]
CHILD_KINDS: dict[str, _Render] = {
    "Deployment": render_deployment,
    "Service": lambda name, namespace, spec, image, _: render_service(name, namespace, spec),
    "PodDisruptionBudget": lambda name, namespace, spec, image, _: render_pdb(name, namespace),
    "HorizontalPodAutoscaler": lambda name, namespace, spec, image, _: render_hpa(
        name, namespace, spec
    ),
}


def render_child(
    kind: str,
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    default_image: str,
    primary_replicas: int | None = None,
) -> dict[str, Any] | None:
    """The one child of `kind` named <name> the spec renders, or None (an HPA while
    autoscaling is off, a kind the operator does not make)."""
    render = CHILD_KINDS.get(kind)
    if render is None:
        return None
    return render(name, namespace, spec, default_image, primary_replicas)


def render_children(
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    default_image: str,
    primary_replicas: int | None = None,
) -> list[dict[str, Any]]:
    """Every child named <name> that should exist, in apply order (the HPA after its
    target); a canary's children come from revisions.py."""
    rendered = (
        render(name, namespace, spec, default_image, primary_replicas)
        for render in CHILD_KINDS.values()
    )
    return [child for child in rendered if child is not None]
