"""kopf handlers: read the spec, render, adopt, apply, report status. Nothing more.

- create/update/resume of a ModelService -> `reconcile()` (render + server-side apply of
  every child, removal of a stale HPA, status through kopf's `patch.status`).
- Events of owned Deployments, HPAs and runtime pods -> status of the owner, recomputed
  from the child that changed (event-driven; no polling). The pods say why replicas are
  not ready (a model fetch that failed, a runtime that crashed, an image that cannot be
  pulled): the status names it, and a Warning event reports it once (per reason and
  detail). Events of any other owned child detect drift: a child deleted or edited away
  from what the owner's spec renders is re-applied at once.
- Indexes (kopf `@kopf.index`) of ModelServices, owned Deployments, owned HPAs and the
  runtime pods give every handler its owner's spec and its siblings' status from the
  watches, without an API call; events of the ModelService itself re-check its status once
  (closing the race between the reconcile's status write and the children's last event).
- One exception to "no polling": while a pod fetches or loads its model, a thread reads
  its last log line every PROGRESS_INTERVAL_S for the status message (a log is no event).
- A watched namespace deleted: its entries are dropped from every index (kopf stops the
  namespace's watch streams as the namespace goes, so the DELETED events of what was in it
  may never be delivered, and kopf keeps their index entries for good; see
  `namespace_event`).
- No finalizers (no timers, no mandatory delete handler): children go by garbage collection,
  and deleting a ModelService never waits for the operator.
- Invalid spec: status Ready=False/InvalidSpec naming the field, a Warning event, and
  `kopf.PermanentError` (no retries until the spec changes). API failures: TemporaryError.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from modelservice_operator import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, VERSION
from modelservice_operator import metrics as m
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.render import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    render_children,
    spec_hash,
)
from modelservice_operator.settings import OperatorSettings
from modelservice_operator.spec import InvalidSpec, ModelServiceSpec, parse_spec
from modelservice_operator.status import (
    PROGRESS_LOG_LINES,
    WARNING_REASONS,
    ConditionType,
    PodDiagnosis,
    compute_status,
    diagnose_pods,
    invalid_status,
    last_progress_line,
    pod_essentials,
    progress_source,
    refused,
    with_progress,
)

SETTINGS = OperatorSettings.from_env()
CHILD_LABELS = {LABEL_MANAGED_BY: FIELD_MANAGER}
RETRY_DELAY_S = 10
# How often the log of a pod still fetching or loading its model is read for its last
# progress line (only starting pods are read; see _Starting).
PROGRESS_INTERVAL_S = 10


# Threads running the (synchronous) handlers. 1000 ModelServices created at once on 2
# cores took 41-56 s to reconcile with anything from 8 to 32 threads: the API server's CPU
# is the limit there, not the operator's concurrency.
HANDLER_THREADS = 8


class ReconcileError(Exception):
    """The API server refused or failed a call while reconciling (wraps KubeApiError)."""


# --- startup, probes, index --------------------------------------------------------------


class QuietSuccesses(logging.Filter):
    """Drops kopf's "Handler 'X' succeeded." for the named handlers; their failures, and
    every other handler's lines, still get through."""

    def __init__(self, handler_ids: Iterable[str]) -> None:
        super().__init__()
        self._drop = frozenset(f"Handler {h!r} succeeded." for h in handler_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg in self._drop)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Progress and diff-base in annotations: the CRD's status schema is ours alone, and
    # anything kopf wrote under status would be pruned by the structural schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only warnings become Kubernetes events; the handlers post their own Normal events.
    settings.posting.level = logging.WARNING
    # kopf logs each handler call that succeeds: for the watch-event handlers that was 4 in
    # 5 lines of the log (12,500 of 15,500 for 1000 ModelServices), all saying nothing.
    quiet = (
        modelservice_event, deployment_event, hpa_event, service_event, pdb_event, pod_event,
        namespace_event,
    )  # fmt: skip
    logging.getLogger("kopf.objects").addFilter(QuietSuccesses(h.__name__ for h in quiet))
    # Recover from a restarted or unreachable API server instead of hanging on a watch.
    # (a watch silently cut off is dropped after client_timeout and re-established).
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 75
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.execution.max_workers = HANDLER_THREADS
    # kopf starts one worker per object with pending events, each holding its event bodies
    # and API connections; with no limit, 1000 ModelServices created at once took the
    # operator to 278 MiB. Only 8 handler threads run anyway, so a bounded worker pool
    # costs no throughput (measured: 1000 reconciled in 46 s, 112 MiB) as long as an idle
    # worker frees its slot quickly instead of after kopf's default 5 s.
    settings.queueing.worker_limit = SETTINGS.max_concurrent or None
    settings.queueing.idle_timeout = 0.5
    # kopf has no leader election and pauses *all* peers of the same priority. Run with
    # --peering and no --priority (the Helm chart with replicaCount > 1), each replica draws
    # a random priority: the highest one works, the others stand by until it is gone.
    if not settings.peering.standalone and settings.peering.priority == 0:
        settings.peering.priority = random.randint(1, 2**31 - 1)
    m.serve(SETTINGS.metrics_port)
    # Load credentials now (a broken kubeconfig fails at startup, not per event), with a
    # connection for every handler thread.
    client(pool_size=HANDLER_THREADS)
    start_progress_poller()
    logger.info(
        "modelservice-operator: runtime image %s, namespaces %s",
        SETTINGS.runtime_image,
        ",".join(SETTINGS.namespaces) or "(all)",
    )


@kopf.index(GROUP, VERSION, PLURAL)
def msvc_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> a snapshot of the ModelService for the child handlers."""
    return {(namespace, name): _snapshot(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> what status needs of an owned Deployment, so that status checks
    read the watch's latest copy instead of GETting it."""
    meta = body.get("metadata") or {}
    return {
        (namespace, name): {
            "metadata": {**_identity(body), "generation": meta.get("generation")},
            "spec": {"replicas": body.get("spec", {}).get("replicas")},
            "status": _clean(body.get("status") or {}),
        }
    }


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
def hpa_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the status of an owned HPA (see deployment_by_name)."""
    return {
        (namespace, name): {"metadata": _identity(body), "status": _clean(body.get("status") or {})}
    }


@kopf.index("v1", "pods", labels=CHILD_LABELS)
def pods_by_owner(
    body: kopf.Body, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, ModelService name) -> what status needs of each of its runtime pods
    (status.pod_essentials: container states and last lines of output, nothing else).
    A pod names its ModelService only by label: its owner is a ReplicaSet."""
    instance = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE)
    if not instance:
        return {}
    pod = pod_essentials(body)
    pod["metadata"].update(_identity(body))
    return {(namespace, instance): pod}


def _identity(body: Mapping[str, Any]) -> dict[str, Any]:
    """The indexed object's own namespace, name and uid (kopf's key for its index entries)
    and creation time, kept in every entry so that `purge_namespace` can drop them."""
    meta = body.get("metadata") or {}
    return {k: meta.get(k) for k in ("namespace", "name", "uid", "creationTimestamp")}


def namespace_gone(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """The namespace is deleted, or kopf takes it for deleted and stops its watch streams:
    marked for deletion, with deletion conditions in its status and none of them True
    (kopf's observation.is_deleted/get_blockers, 1.45). From then on no event of what was in
    it is sure to arrive."""
    if event_type == "DELETED":
        return True
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    return bool(
        meta.get("deletionTimestamp")
        and conditions
        and not any(c.get("status") == "True" for c in conditions)
    )


def purge_namespace(index: kopf.Index, namespace: str, deleted_at: str | None = None) -> int:
    """Drop every entry of `namespace` from a kopf index; returns how many were dropped.

    `deleted_at` (the namespace's deletionTimestamp) keeps what was created at or after it:
    nothing can be created in a terminating namespace, so those belong to a namesake
    namespace created since (whose events this handler may see before the old one's last).

    kopf has no public way to remove entries: it drops an object's entries when the object's
    DELETED event is processed, keyed by the object's (namespace, name, uid), through
    Index._discard ("indexers' internal protocol"). That is what this calls, with the same
    keys (`_identity` of each entry); tests/unit/test_operator_decisions.py pins it against
    kopf's own Index so that a kopf upgrade that changes it fails there. Runs on the event
    loop (an async handler), where kopf itself mutates the indexes."""
    stale = {
        (namespace, entry["metadata"]["name"], entry["metadata"]["uid"])
        for key in list(index)
        if isinstance(key, tuple) and key[0] == namespace
        for entry in index[key]
        if not (deleted_at and (entry["metadata"].get("creationTimestamp") or "") >= deleted_at)
    }
    for acckey in stale:
        index._discard(acckey)  # type: ignore[attr-defined]
    return len(stale)


def _indexed(index: kopf.Index, namespace: str, name: str) -> dict[str, Any] | None:
    return next(iter(index.get((namespace, name), [])), None)


@kopf.on.probe(id="modelservices")
def probe_count(msvc_by_name: kopf.Index, **_: Any) -> int:
    return len(msvc_by_name)


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "creationTimestamp": meta.get("creationTimestamp"),
            "generation": meta.get("generation"),
            "labels": dict(meta.get("labels") or {}),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": _clean(body.get("spec") or {}),
        "status": _clean(body.get("status") or {}),
    }


def _owner_body(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """What kopf.adopt and kopf.event need of the owner (with the owner's labels)."""
    meta = snapshot["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels")},
    }


def _state_key(meta: Mapping[str, Any]) -> tuple[str, str, str]:
    """Key of a ModelService's in-memory state; the uid tells a re-created namesake apart."""
    return (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid")))


# The pod failure last reported per ModelService (PodDiagnosis.signature), so that the
# Warning event comes once per failure and not with every pod event. Handler threads
# update it concurrently: the lock makes check-and-set one step.
_reported: dict[tuple[str, str, str], tuple[str, str]] = {}
_reported_lock = threading.Lock()


def _ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ConditionType.READY.value:
            return c
    return {}


def report_pod_failure(
    owner: Mapping[str, Any], status: Mapping[str, Any], diagnosis: PodDiagnosis | None
) -> None:
    """A Warning event on the ModelService when its status newly blames a pod (a failed
    fetch, a crashed runtime, an image pull, no node); nothing while the same failure
    goes on, however many pod events it takes. A failure that clears and comes back is
    reported again."""
    key = _state_key(owner["metadata"])
    ready = _ready_condition(status)
    if (
        diagnosis is None
        or diagnosis.reason not in WARNING_REASONS
        or ready.get("reason") != diagnosis.reason.value
    ):
        with _reported_lock:
            _reported.pop(key, None)
        return
    with _reported_lock:
        if _reported.get(key) == diagnosis.signature:
            return
        _reported[key] = diagnosis.signature
    before = _ready_condition(owner.get("status"))
    if (before.get("reason"), before.get("message")) == (ready["reason"], ready["message"]):
        return  # reported before this process started: the status already says so
    obj = _owner_body(owner)
    kopf.warn(obj, reason=ready["reason"], message=ready["message"])  # type: ignore[arg-type]


def _forget(meta: Mapping[str, Any]) -> None:
    with _reported_lock:
        _reported.pop(_state_key(meta), None)
    _drop_progress(str(meta.get("namespace")), str(meta.get("name")))


# --- the last log line of a starting pod ------------------------------------------------
#
# A pod's log is no watch event, and a kopf timer or daemon would put a finalizer on every
# ModelService. So the status computations note which ModelServices have a pod fetching
# or loading its model (with what they computed from: owner, Deployment, HPA, pods), and
# one thread reads those pods' logs every PROGRESS_INTERVAL_S; a new last line is stored
# and the status recomputed from the noted state. Every status computation shows the
# stored line, not only the poller's, so the message does not flip with each pod event.


@dataclass
class _Starting:
    owner: Mapping[str, Any]
    deployment: Mapping[str, Any] | None
    hpa: Mapping[str, Any] | None
    pods: list[Mapping[str, Any]]
    source: tuple[str, str]  # (pod, container) whose log tells the progress


_starting: dict[tuple[str, str], _Starting] = {}
_progress: dict[tuple[str, str, str, str], str] = {}  # (ns, name, pod, container) -> line
_progress_lock = threading.Lock()
_poller: threading.Thread | None = None


def _drop_progress(namespace: str, name: str) -> None:
    with _progress_lock:
        _starting.pop((namespace, name), None)
        for key in [k for k in _progress if k[:2] == (namespace, name)]:
            del _progress[key]


def _track_start(
    owner: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    pods: list[Mapping[str, Any]],
    diagnosis: PodDiagnosis | None,
) -> None:
    meta = owner["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    source = progress_source(diagnosis)
    if source is None:
        _drop_progress(namespace, name)
        return
    with _progress_lock:
        _starting[(namespace, name)] = _Starting(owner, deployment, hpa, pods, source)
        for key in [k for k in _progress if k[:2] == (namespace, name) and k[2:] != source]:
            del _progress[key]  # another pod or container than the one reported now


def poll_progress_once(logger: logging.Logger) -> int:
    """Read the log of every noted starting pod; recompute the status of those whose last
    line changed. Returns how many changed."""
    with _progress_lock:
        noted = list(_starting.items())
    changed = 0
    for (namespace, name), start in noted:
        pod, container = start.source
        try:
            text = client().log_tail(namespace, pod, container, PROGRESS_LOG_LINES)
        except KubeApiError as e:
            # 400: the container has not started yet; 404: the pod is gone. Else, say so.
            log = logger.debug if e.status in (400, 404) else logger.warning
            log("cannot read the log of pod %s container %s: %s", pod, container, e)
            continue
        line = last_progress_line(text)
        key = (namespace, name, pod, container)
        with _progress_lock:
            if line is None or _progress.get(key) == line or (namespace, name) not in _starting:
                continue
            _progress[key] = line
        changed += 1
        # No Warning events from here: this state is what the handlers last saw.
        refresh_status(start.owner, start.deployment, start.hpa, start.pods, logger, report=False)
    return changed


def _poll_progress_forever() -> None:
    logger = logging.getLogger("modelservice_operator.progress")
    while True:
        time.sleep(PROGRESS_INTERVAL_S)
        try:
            poll_progress_once(logger)
        except Exception:  # the poller must outlive any one failure
            logger.exception("reading the progress of starting pods failed")


def start_progress_poller() -> None:
    """Start the poller thread once per process (the operator may be run several times in
    one process, as the tests do)."""
    global _poller
    if _poller is None or not _poller.is_alive():
        _poller = threading.Thread(target=_poll_progress_forever, name="progress", daemon=True)
        _poller.start()


def _with_known_progress(
    namespace: str, name: str, diagnosis: PodDiagnosis | None
) -> PodDiagnosis | None:
    source = progress_source(diagnosis)
    if source is None:
        return diagnosis
    with _progress_lock:
        line = _progress.get((namespace, name, *source))
    return with_progress(diagnosis, line)


def _normal_event(obj: Mapping[str, Any], *, reason: str, message: str) -> None:
    """A Normal event on the ModelService (kopf.info would be dropped: posting.level is
    WARNING so that kopf's own INFO log lines do not become events)."""
    kopf.event(obj, type="Normal", reason=reason, message=message)  # type: ignore[arg-type]


# --- the shared reconcile ------------------------------------------------------------------


def desired_children(snapshot: Mapping[str, Any], spec: ModelServiceSpec) -> list[dict[str, Any]]:
    meta = snapshot["metadata"]
    children = render_children(meta["name"], meta["namespace"], spec, SETTINGS.runtime_image)
    kopf.adopt(children, owner=_owner_body(snapshot))  # type: ignore[arg-type]
    return children


def _apply(child: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return client().apply(child)
    except KubeApiError as e:
        raise ReconcileError(
            f"{child['kind']} {child['metadata']['name']}: {e.message or e.reason}"
        ) from e


def managed_by_us(obj: Mapping[str, Any] | None) -> bool:
    """The object carries our managed-by label: the operator may delete it. An object of
    the same name that someone else made (or absent) is never ours to delete."""
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_MANAGED_BY) == FIELD_MANAGER


def may_have_hpa(indexed: bool, old: Mapping[str, Any] | None) -> bool:
    """Whether a reconcile must look for a stale HPA of ours to remove: one is in the index,
    or (created moments ago, not indexed yet) the previous spec autoscaled. Otherwise none
    of ours exists and the GET is saved (1000 reconciles at once are API-bound)."""
    return indexed or bool(((old or {}).get("spec") or {}).get("autoscaling"))


def failure_is_the_specs(e: ReconcileError) -> bool:
    """The API server refused a child built from passed-through fields (tolerations,
    affinity, metrics, behavior, env) as invalid (400, 422): the spec is at fault and a retry
    cannot help (PermanentError, InvalidSpec). Anything else (unreachable, 5xx, 409, 403 of a
    terminating namespace) may pass: TemporaryError."""
    cause = e.__cause__
    return isinstance(cause, KubeApiError) and cause.status in (400, 422)


def _remove_stale_hpa(namespace: str, name: str) -> bool:
    """Delete the HPA we created earlier when autoscaling was removed from the spec."""
    kube = client()
    try:
        hpa = kube.get("HorizontalPodAutoscaler", namespace, name)
        if not managed_by_us(hpa):
            return False  # absent, or not ours: never delete what we did not create
        return kube.delete("HorizontalPodAutoscaler", namespace, name)
    except KubeApiError as e:
        raise ReconcileError(f"HorizontalPodAutoscaler {name}: {e.message or e.reason}") from e


def reconcile(
    snapshot: Mapping[str, Any],
    spec: ModelServiceSpec,
    logger: logging.Logger | Any,
    *,
    may_have_hpa: bool = True,
    pods: Iterable[Mapping[str, Any]] = (),
) -> tuple[dict[str, Any], PodDiagnosis | None]:
    """Apply every child the spec renders, drop a stale HPA; return the new status and
    what the pods (`pods`, from the index) said about it.

    `may_have_hpa=False` skips looking for a stale HPA: the caller knows none of ours exists.
    """
    meta = snapshot["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    owner = _owner_body(snapshot)
    applied: dict[str, dict[str, Any]] = {}
    for child in desired_children(snapshot, spec):
        applied[child["kind"]] = _apply(child)
    if spec.autoscaling is None and may_have_hpa and _remove_stale_hpa(namespace, name):
        _normal_event(
            owner,
            reason="HPARemoved",
            message="autoscaling removed: deleted the HorizontalPodAutoscaler; "
            f"replicas fixed at {spec.fixed_replicas}",
        )
    kinds = ", ".join(applied)
    logger.info("applied %s (spec hash %s)", kinds, spec_hash(spec))
    _normal_event(owner, reason="Applied", message=f"applied {kinds} (spec hash {spec_hash(spec)})")
    if spec.autoscaling is not None and spec.replicas is not None:
        _normal_event(
            owner,
            reason="ReplicasIgnored",
            message=f"spec.replicas={spec.replicas} is ignored while spec.autoscaling is set: "
            "the HorizontalPodAutoscaler owns the replica count "
            f"({spec.autoscaling.min_replicas}..{spec.autoscaling.max_replicas})",
        )
    diagnosis = _with_known_progress(namespace, name, diagnose_pods(pods, spec))
    status = compute_status(
        name=name,
        namespace=namespace,
        generation=meta.get("generation"),
        spec=spec,
        deployment=applied.get("Deployment"),
        hpa=applied.get("HorizontalPodAutoscaler"),
        previous=snapshot.get("status"),
        diagnosis=diagnosis,
    )
    return status, diagnosis


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_modelservice(
    body: kopf.Body,
    old: kopf.Body | None,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    logger: kopf.Logger,
    reason: kopf.Reason,
    hpa_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    **_: Any,
) -> None:
    trigger = str(reason.value if hasattr(reason, "value") else reason)
    snapshot = _snapshot(body)
    hpa_maybe = may_have_hpa(bool(hpa_by_name.get((namespace, name))), old)
    with m.timed(trigger):
        try:
            spec = parse_spec(snapshot["spec"], name)
        except InvalidSpec as e:
            m.RECONCILES.labels(trigger, "invalid").inc()
            m.ERRORS.labels("InvalidSpec").inc()
            patch.status.update(invalid_status(
                message=str(e), generation=snapshot["metadata"]["generation"],
                previous=snapshot["status"],
            ))  # fmt: skip
            kopf.warn(body, reason="InvalidSpec", message=str(e))
            raise kopf.PermanentError(f"invalid spec: {e}") from e
        try:
            status, diagnosis = reconcile(
                snapshot,
                spec,
                logger,
                may_have_hpa=hpa_maybe,
                pods=pods_by_owner.get((namespace, name), []),
            )
        except ReconcileError as e:
            m.RECONCILES.labels(trigger, "error").inc()
            m.ERRORS.labels("ApiError").inc()
            kopf.warn(body, reason="ReconcileFailed", message=str(e))
            if failure_is_the_specs(e):
                patch.status.update(invalid_status(
                    message=f"refused by the API server: {e}",
                    generation=snapshot["metadata"]["generation"], previous=snapshot["status"],
                ))  # fmt: skip
                raise kopf.PermanentError(str(e)) from e
            raise kopf.TemporaryError(str(e), delay=RETRY_DELAY_S) from e
        patch.status.update(status)
        report_pod_failure(snapshot, status, diagnosis)
        m.RECONCILES.labels(trigger, "ok").inc()


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_modelservice(name: str, namespace: str, logger: kopf.Logger, **_: Any) -> None:
    # optional=True: no finalizer. Children go with their owner references (garbage
    # collection); nothing to clean up here but a log line.
    logger.info("ModelService %s/%s deleted; children are garbage-collected", namespace, name)


# --- children: drift and status ------------------------------------------------------------


def _owner_of(child: Mapping[str, Any], index: kopf.Index) -> dict[str, Any] | None:
    """The indexed ModelService that controls `child` (matching uid), if still alive."""
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") != KIND or not ref.get("controller"):
            continue
        for snap in index.get((meta.get("namespace"), ref.get("name")), []):
            if snap["metadata"]["uid"] == ref.get("uid") and not snap["metadata"].get(
                "deletionTimestamp"
            ):
                return snap
    return None


def _named(items: list[Any]) -> dict[Any, Any] | None:
    """Entries by `name` when every entry is a mapping with a distinct name, else None."""
    names = [i.get("name") if isinstance(i, Mapping) else None for i in items]
    if not items or None in names or len(set(names)) != len(names):
        return None
    return dict(zip(names, items, strict=True))


def contains(live: Any, want: Any) -> bool:
    """True when every field of `want` is present and equal in `live` (API defaults and
    fields of other managers may add more). Scalars compare as strings because the API
    returns quantities and ports as it normalized them. Lists of named entries
    (containers, env, ports, volumes: server-side-apply maps) are matched by name, so an
    entry another manager added (a sidecar) is not drift: our apply could never remove it."""
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        if not isinstance(live, list):
            return False
        wanted, present = _named(want), _named(live)
        if wanted is not None and present is not None:
            return all(k in present and contains(present[k], v) for k, v in wanted.items())
        return len(live) == len(want) and all(
            contains(a, b) for a, b in zip(live, want, strict=True)
        )
    return live == want or str(live) == str(want)


def drift(
    child: Mapping[str, Any], event_type: str | None, wanted: Mapping[str, Any] | None
) -> str | None:
    """What happened to a child behind the operator's back: "deleted", "edited" (a field
    of `wanted` is missing or different), or None (as rendered; fields others added do not
    count, see `contains`). A child the spec does not render (an HPA while autoscaling is
    off) is never drift: the reconcile removes it."""
    if wanted is None:
        return None
    if event_type == "DELETED":
        return "deleted"
    return None if contains(child, wanted) else "edited"


def repair_drift(
    child: Mapping[str, Any],
    event_type: str | None,
    index: kopf.Index,
    logger: logging.Logger | Any,
) -> dict[str, Any] | None:
    """Re-apply a child that was deleted or edited away from its owner's spec.

    Returns the owner snapshot (None if the child has no live owner or the owner's spec is
    invalid) so callers can update its status.
    """
    owner = _owner_of(child, index)
    if owner is None:
        return None
    try:
        spec = parse_spec(owner["spec"], owner["metadata"]["name"])
    except InvalidSpec:
        return None
    kind = child.get("kind")
    wanted = next((c for c in desired_children(owner, spec) if c["kind"] == kind), None)
    what = drift(child, event_type, wanted)
    if wanted is not None and what is not None:
        try:
            _apply(wanted)
        except ReconcileError as e:
            cause = e.__cause__
            if isinstance(cause, KubeApiError) and cause.namespace_terminating:
                return None  # the whole namespace is going: its deletion is not drift
            logger.warning("could not restore %s %s: %s", kind, wanted["metadata"]["name"], e)
            return owner
        m.DRIFT_REPAIRS.labels(kind).inc()
        logger.info("restored %s %s (%s by someone else)", kind, wanted["metadata"]["name"], what)
        _normal_event(
            _owner_body(owner),
            reason="DriftRepaired",
            message=f"{kind} {wanted['metadata']['name']} was {what} outside the "
            "operator; restored it from the ModelService spec",
        )
    return owner


def children_status(
    owner: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    progress: Callable[[PodDiagnosis | None], PodDiagnosis | None] = lambda found: found,
) -> tuple[dict[str, Any], PodDiagnosis | None] | None:
    """The owner's status as its children make it, at the generation the reconcile last
    observed; None where the children have no say: before the first reconcile (no
    observedGeneration), over a refused spec's status, or when the spec does not parse.
    `progress` may add what is known of a starting pod (its last log line) to the diagnosis."""
    meta = owner["metadata"]
    previous = owner.get("status") or {}
    generation = previous.get("observedGeneration")
    if generation is None or refused(previous):
        return None
    try:
        spec = parse_spec(owner["spec"], meta["name"])
    except InvalidSpec:
        return None
    diagnosis = progress(diagnose_pods(pods, spec))
    status = compute_status(
        name=meta["name"], namespace=meta["namespace"], generation=generation, spec=spec,
        deployment=deployment, hpa=hpa, previous=previous, diagnosis=diagnosis,
    )  # fmt: skip
    return status, diagnosis


def status_update(previous: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any] | None:
    """The status patch a child event makes: `status` less observedGeneration (the
    reconcile's alone), or None when every field already has that value (no write, no
    watch event, no loop)."""
    update = {k: v for k, v in status.items() if k != "observedGeneration"}
    return None if all(previous.get(k) == v for k, v in update.items()) else update


def refresh_status(
    owner: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    logger: logging.Logger | Any,
    *,
    report: bool = True,
) -> None:
    """Recompute the owner's status from its children and patch it when it changed.

    `observedGeneration` belongs to the reconcile handler: this never writes it, and does
    nothing before the first reconcile has (that reconcile's own status write comes back as
    a ModelService event, which calls this again, so the last word is always the children's).
    Nor does it overwrite a refused spec's status: only a reconcile of a new spec may.
    A Failed phase from the pods is the children's own: it goes when they recover.
    """
    meta = owner["metadata"]
    pods = list(pods)

    def known_progress(found: PodDiagnosis | None) -> PodDiagnosis | None:
        _track_start(owner, deployment, hpa, pods, found)
        return _with_known_progress(meta["namespace"], meta["name"], found)

    recomputed = children_status(owner, deployment, hpa, pods, known_progress)
    if recomputed is None:
        return
    status, diagnosis = recomputed
    if report:
        report_pod_failure(owner, status, diagnosis)
    update = status_update(owner.get("status") or {}, status)
    if update is None:
        return
    status = update
    try:
        client().patch_status(meta["namespace"], meta["name"], status)
    except KubeApiError as e:
        if e.status != 404:
            logger.warning("could not update status of %s: %s", meta["name"], e)


def children_may_update(owner: Mapping[str, Any]) -> bool:
    """A ModelService event re-checks the status against the children only when the
    reconcile has written one (a phase) and the object is not being deleted."""
    meta = owner.get("metadata") or {}
    return not meta.get("deletionTimestamp") and bool((owner.get("status") or {}).get("phase"))


@kopf.on.event(GROUP, VERSION, PLURAL)
def modelservice_event(
    body: kopf.Body,
    type: str | None,
    deployment_by_name: kopf.Index,
    hpa_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """After any write to a ModelService (ours included), check its status against the
    children once more: closes the race where the reconcile handler's status lands after
    the children's last event. Quiet when nothing changed (no patch, no new event)."""
    if type == "DELETED":
        _forget(body.get("metadata") or {})
        return
    owner = _snapshot(body)
    meta = owner["metadata"]
    if not children_may_update(owner):
        return
    dep = _indexed(deployment_by_name, meta["namespace"], meta["name"])
    hpa = None
    if owner["spec"].get("autoscaling"):
        hpa = _indexed(hpa_by_name, meta["namespace"], meta["name"])
    pods = pods_by_owner.get((meta["namespace"], meta["name"]), [])
    refresh_status(owner, dep, hpa, pods, logger)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_event(
    body: kopf.Body,
    type: str | None,
    msvc_by_name: kopf.Index,
    hpa_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    owner = repair_drift(body, type, msvc_by_name, logger)
    if owner is None:
        return
    meta = owner["metadata"]
    live = None if type == "DELETED" else body
    hpa = None
    if owner["spec"].get("autoscaling"):
        hpa = _indexed(hpa_by_name, meta["namespace"], meta["name"])
    pods = pods_by_owner.get((meta["namespace"], meta["name"]), [])
    refresh_status(owner, live, hpa, pods, logger)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
def hpa_event(
    body: kopf.Body,
    type: str | None,
    msvc_by_name: kopf.Index,
    deployment_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    owner = repair_drift(body, type, msvc_by_name, logger)
    if owner is None or type == "DELETED":
        return
    meta = owner["metadata"]
    dep = _indexed(deployment_by_name, meta["namespace"], meta["name"])
    pods = pods_by_owner.get((meta["namespace"], meta["name"]), [])
    refresh_status(owner, dep, body, pods, logger)


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
def service_event(
    body: kopf.Body,
    type: str | None,
    msvc_by_name: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    repair_drift(body, type, msvc_by_name, logger)


@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
def pdb_event(
    body: kopf.Body,
    type: str | None,
    msvc_by_name: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    repair_drift(body, type, msvc_by_name, logger)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def pod_event(
    body: kopf.Body,
    namespace: str,
    msvc_by_name: kopf.Index,
    deployment_by_name: kopf.Index,
    hpa_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A runtime pod changed (scheduled, fetching, crashed, ready, gone): recompute its
    ModelService's status with the pods index, which already holds this event's pod.
    Pods are not repaired: their ReplicaSet owns them."""
    instance = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE)
    owner = _indexed(msvc_by_name, namespace, instance) if instance else None
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    dep = _indexed(deployment_by_name, namespace, instance)
    hpa = _indexed(hpa_by_name, namespace, instance) if owner["spec"].get("autoscaling") else None
    refresh_status(owner, dep, hpa, pods_by_owner.get((namespace, instance), []), logger)


@kopf.on.event("v1", "namespaces")
async def namespace_event(
    body: kopf.Body,
    type: str | None,
    msvc_by_name: kopf.Index,
    deployment_by_name: kopf.Index,
    hpa_by_name: kopf.Index,
    pods_by_owner: kopf.Index,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """A namespace going: drop what the indexes hold of it.

    kopf (1.45) stops a namespace's watch streams as soon as it takes the namespace for
    deleted (`namespace_gone`), cancelling events still in flight on them and giving the
    per-object workers 2 s (queueing.exit_timeout) to finish; DELETED events of the
    ModelServices and children in it that had not been processed by then never reach the
    indexes, and kopf never drops index entries of a namespace it stops watching. Those
    entries stayed for good (the /healthz count, and owners that no longer exist for child
    handlers; a re-created namesake namespace would have had two owners of one name).
    Purged when kopf stops the streams and again on the namespace's DELETED event (an
    old event a finishing worker processed in between may have re-indexed something).
    Async: kopf mutates its indexes on the event loop, and so does this."""
    if not namespace_gone(type, body):
        return
    meta = body.get("metadata") or {}
    namespace, deleted_at = str(meta.get("name")), meta.get("deletionTimestamp")
    dropped = {
        what: purge_namespace(index, namespace, deleted_at)
        for what, index in (
            ("ModelServices", msvc_by_name),
            ("Deployments", deployment_by_name),
            ("HPAs", hpa_by_name),
            ("pods", pods_by_owner),
        )
    }
    with _reported_lock:
        for key in [k for k in _reported if k[0] == namespace]:
            del _reported[key]
    with _progress_lock:  # nor read the logs of its starting pods any more
        for key in [k for k in _starting if k[0] == namespace]:
            del _starting[key]
        for key in [k for k in _progress if k[0] == namespace]:
            del _progress[key]
    if any(dropped.values()):
        logger.info(
            "namespace %s is gone: dropped from the operator's indexes what its watch did not "
            "report deleted: %s",
            namespace,
            ", ".join(f"{n} {what}" for what, n in dropped.items() if n),
        )


def _clean(value: Any) -> Any:
    """kopf bodies are views; a plain copy keeps render/compare functions simple."""
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
