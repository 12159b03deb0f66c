"""kopf registrations: each handler reads what kopf gives it and calls the module of its
concern. Nothing else lives here.

- create/update/resume of a ModelService -> `reconcile.reconcile` (render + server-side
  apply of every child, removal of a stale HPA), status through kopf's `patch.status`.
- Events of owned Deployments, HPAs and runtime pods -> `reporting.refresh_status` of the
  owner, recomputed from its children (`indexes.children`; event-driven, no polling). The
  pods say why replicas are not ready (a model fetch that failed, a runtime that crashed,
  an image that cannot be pulled): the status names it, and a Warning event reports it
  once. Events of every owned child first go through `drift.repair_drift`: a child deleted
  or edited away from what the owner's spec renders is re-applied at once.
- Indexes (kopf `@kopf.index`, entries built in indexes.py) of ModelServices, owned
  Deployments, owned HPAs and the runtime pods give every handler its owner's spec and its
  siblings' status from the watches, without an API call; events of the ModelService itself
  re-check its status once (closing the race between the reconcile's status write and the
  children's last event).
- Events of owned HTTPRoutes and GRPCRoutes (their Gateway's controller writing their
  status) -> the owner's condition Routed, through the same `refresh_status` (the routes'
  statuses are kept in indexes.ROUTES, not a kopf index: the Gateway API may be absent).
- One exception to "no polling": progress.py's thread reads the last log line of a pod
  fetching or loading its model, for the status message (a log is no event).
- A watched namespace deleted: its entries are dropped from every index (purge.py).
- No finalizers (no timers, no mandatory delete handler): children go by garbage collection,
  and deleting a ModelService never waits for the operator.
- Invalid spec: status Ready=False/InvalidSpec naming the field, a Warning event, and
  `kopf.PermanentError` (no retries until the spec changes). API failures: TemporaryError.
- Settings (OperatorSettings) are read from the environment at startup and kept in kopf's
  memo (`memo.settings`), which kopf hands to every handler.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from modelservice_operator import GROUP, PLURAL, VERSION, indexes, kopf_compat
from modelservice_operator import metrics as m
from modelservice_operator.drift import repair_drift
from modelservice_operator.indexes import CHILD_LABELS, Indexes
from modelservice_operator.kube import client
from modelservice_operator.progress import forget as forget_progress
from modelservice_operator.progress import start_progress_poller
from modelservice_operator.purge import purge
from modelservice_operator.reasons import Reason
from modelservice_operator.reconcile import (
    may_have_hpa,
    may_have_revisions,
    reconcile,
    refresh_route,
    refresh_scale_down,
    remove_reference_grant,
    remove_stale_route,
    restore_routes,
)
from modelservice_operator.reporting import (
    children_may_update,
    refresh_from_progress,
    refresh_status,
    report_pod_failure,
)
from modelservice_operator.reporting import forget as forget_reports
from modelservice_operator.revisions import CANARY, clash_candidates, name_clash, revision_name
from modelservice_operator.scaler import forget as forget_scaler
from modelservice_operator.scaler import start_scaler, wake_if_asked
from modelservice_operator.scaler import track as track_scaling
from modelservice_operator.scaling import asks_for_zero
from modelservice_operator.settings import OperatorSettings
from modelservice_operator.spec import InvalidSpec, ModelServiceSpec, parse_spec
from modelservice_operator.status import invalid_status
from modelservice_operator.traffic import gateway_of, set_route_defaults
from modelservice_operator.writes import (
    ReconcileError,
    failure_is_the_specs,
)

RETRY_DELAY_S = 10
# Threads running the (synchronous) handlers. 1000 ModelServices created at once on 2
# cores took 41-56 s to reconcile with anything from 8 to 32 threads: the API server's CPU
# is the limit there, not the operator's concurrency.
HANDLER_THREADS = 8


class QuietSuccesses(logging.Filter):
    """Drops kopf's "Handler 'X' succeeded." for the named handlers; their failures, and
    every other handler's lines, still get through."""

    def __init__(self, handler_ids: Iterable[str]) -> None:
        super().__init__()
        self._drop = frozenset(f"Handler {h!r} succeeded." for h in handler_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg in self._drop)


def _image(memo: kopf.Memo) -> str:
    """The default runtime image, from the settings read at startup."""
    settings: OperatorSettings = memo.settings
    return settings.runtime_image


def _name_clash(
    snapshot: Mapping[str, Any], spec: ModelServiceSpec, msvc_by_name: kopf.Index
) -> str | None:
    """A canary's children named like another ModelService's (revisions.name_clash), from
    the ModelService index: no API call."""
    meta = snapshot["metadata"]
    neighbours = {}
    for other in clash_candidates(meta["name"]):
        entry = indexes.indexed(msvc_by_name, meta["namespace"], other)
        if entry is not None:
            created = str(entry["metadata"].get("creationTimestamp") or "")
            neighbours[other] = (bool((entry.get("spec") or {}).get("canary")), created)
    if not neighbours:
        return None
    created = str(meta.get("creationTimestamp") or "")
    return name_clash(meta["name"], created, spec.canary is not None, neighbours)


# --- startup, probes, indexes --------------------------------------------------------------


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    operator = memo.settings = OperatorSettings.from_env()
    set_route_defaults(operator.routes)
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
        modelservice_event, deployment_event, hpa_event, service_or_pdb_event, pod_event,
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
    settings.queueing.worker_limit = operator.max_concurrent or None
    settings.queueing.idle_timeout = 0.5
    # kopf has no leader election and pauses *all* peers of the same priority. Run with
    # --peering and no --priority (the Helm chart with replicaCount > 1), each replica draws
    # a random priority: the highest one works, the others stand by until it is gone.
    if not settings.peering.standalone and settings.peering.priority == 0:
        settings.peering.priority = random.randint(1, 2**31 - 1)
    m.serve(operator.metrics_port)
    # Load credentials now (a broken kubeconfig fails at startup, not per event), with a
    # connection for every handler thread.
    client(pool_size=HANDLER_THREADS)
    start_progress_poller(refresh_from_progress)
    start_scaler()
    gateway = operator.routes.gateway
    logger.info(
        "modelservice-operator: runtime image %s, namespaces %s, default Gateway %s",
        operator.runtime_image,
        ",".join(operator.namespaces) or "(all)",
        f"{gateway.namespace}/{gateway.name}" if gateway else "(none)",
    )


@kopf.index(GROUP, VERSION, PLURAL, id=indexes.MODELSERVICES)
def msvc_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the ModelService and its parsed spec, for the child handlers."""
    return {(namespace, name): indexes.modelservice_entry(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS, id=indexes.DEPLOYMENTS)
def deployment_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): indexes.deployment_entry(body)}


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS, id=indexes.HPAS)
def hpa_by_name(
    body: kopf.Body, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace, name): indexes.hpa_entry(body)}


@kopf.index("v1", "pods", labels=CHILD_LABELS, id=indexes.PODS)
def pods_by_owner(
    body: kopf.Body, namespace: str, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, ModelService name) -> what status needs of each of its runtime pods."""
    instance = indexes.pod_instance(body)
    return {(namespace, instance): indexes.pod_entry(body)} if instance else {}


@kopf.on.probe(id="modelservices")
def probe_count(msvc_by_name: kopf.Index, **_: Any) -> int:
    return len(msvc_by_name)


# --- the ModelService ----------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_modelservice(
    body: kopf.Body,
    old: kopf.Body | None,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    reason: kopf.Reason,
    **kwargs: Any,
) -> None:
    watched = Indexes.given(kwargs)
    trigger = str(reason.value if hasattr(reason, "value") else reason)
    snapshot = indexes.snapshot(body)
    generation, previous = snapshot["metadata"]["generation"], snapshot["status"]
    with m.timed(trigger):
        try:
            spec = parse_spec(snapshot["spec"], name)
            clash = _name_clash(snapshot, spec, watched.modelservices)
            if clash is not None:
                raise InvalidSpec([clash])
        except InvalidSpec as e:
            m.RECONCILES.labels(trigger, "invalid").inc()
            m.ERRORS.labels(Reason.INVALID_SPEC.value).inc()
            patch.status.update(
                invalid_status(message=str(e), generation=generation, previous=previous)
            )
            kopf.warn(body, reason=Reason.INVALID_SPEC.value, message=str(e))
            raise kopf.PermanentError(f"invalid spec: {e}") from e
        canary = indexes.indexed(watched.deployments, namespace, revision_name(name, CANARY))
        try:
            status, diagnosis = reconcile(
                snapshot, spec, _image(memo), logger,
                may_have_hpa=may_have_hpa(bool(watched.hpas.get((namespace, name))), old),
                pods=watched.pods.get((namespace, name), []),
                may_have_revisions=may_have_revisions(canary is not None, old),
                canary=canary,
            )  # fmt: skip
        except ReconcileError as e:
            m.RECONCILES.labels(trigger, "error").inc()
            m.ERRORS.labels("ApiError").inc()
            kopf.warn(body, reason=Reason.RECONCILE_FAILED.value, message=str(e))
            if failure_is_the_specs(e):
                patch.status.update(invalid_status(
                    message=f"refused by the API server: {e}", generation=generation,
                    previous=previous,
                ))  # fmt: skip
                raise kopf.PermanentError(str(e)) from e
            raise kopf.TemporaryError(str(e), delay=RETRY_DELAY_S) from e
        patch.status.update(status)
        report_pod_failure(snapshot, status, diagnosis)
        m.RECONCILES.labels(trigger, "ok").inc()
    if indexes.asked_for_zero(old) and not asks_for_zero(spec):
        _release_grant(namespace, watched.modelservices, logger)


def _release_grant(namespace: str | None, msvc_by_name: kopf.Index, logger: kopf.Logger) -> None:
    """A ModelService of `namespace` stopped asking for scale to zero (deleted, or its
    minReplicas raised): its namespace's ReferenceGrant to the activator goes once no other
    one there asks. A failure is logged; the grant is then left, as it was before."""
    if namespace is None or indexes.zero_in_namespace(msvc_by_name, namespace):
        return
    try:
        if remove_reference_grant(namespace):
            logger.info(
                "deleted the ReferenceGrant of namespace %s to the activator: no "
                "ModelService there scales to zero any more", namespace,
            )  # fmt: skip
    except ReconcileError as e:
        logger.warning("could not delete the ReferenceGrant of namespace %s: %s", namespace, e)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_modelservice(name: str, namespace: str, logger: kopf.Logger, **_: Any) -> None:
    # optional=True: no finalizer. Children go with their owner references (garbage
    # collection); nothing to clean up here but a log line.
    logger.info("ModelService %s/%s deleted; children are garbage-collected", namespace, name)


@kopf.on.event(GROUP, VERSION, PLURAL)
def modelservice_event(
    body: kopf.Body, type: str | None, logger: kopf.Logger, **kwargs: Any
) -> None:
    """After any write to a ModelService (ours included), check its status against the
    children once more: closes the race where the reconcile handler's status lands after
    the children's last event. Quiet when nothing changed (no patch, no new event)."""
    watched = Indexes.given(kwargs)
    if type == "DELETED":
        forget_reports(body.get("metadata") or {})
        forget_progress(body.get("metadata") or {})
        forget_scaler(body.get("metadata") or {})
        if indexes.asked_for_zero(body):
            namespace = (body.get("metadata") or {}).get("namespace")
            _release_grant(namespace, watched.modelservices, logger)
        return
    # The index entry of this very body (kopf indexes an event before its handlers run),
    # with its spec parsed once; a fresh snapshot if it is not there (yet).
    owner = indexes.owner_of_body(body, watched.modelservices)
    if not children_may_update(owner):
        return
    spec = indexes.owner_spec(owner)
    track_scaling(owner, spec)
    if wake_if_asked(owner, logger):
        return  # its status write comes back as another event
    found = watched.children(owner)
    if spec is not None and spec.canary is None and spec.autoscaling is not None:
        refresh_route(owner, None, logger, primary=found.deployment)  # scale to zero's
    refresh_status(owner, found, logger)


# --- children -------------------------------------------------------------------------------


def _repaired(
    body: kopf.Body,
    type: str | None,
    memo: kopf.Memo,
    logger: kopf.Logger,
    kwargs: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, Indexes]:
    """A child's event through drift repair: its live owner (None when the child is not a
    ModelService's, or the owner is going), and the indexes."""
    watched = Indexes.given(kwargs)
    return repair_drift(body, type, watched.modelservices, _image(memo), logger), watched


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
def deployment_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    owner, watched = _repaired(body, type, memo, logger, kwargs)
    if owner is None:
        return
    live = None if type == "DELETED" else body
    if (body.get("metadata") or {}).get("name") == owner["metadata"]["name"]:
        found = watched.children(owner, deployment=live)
        if (owner.get("spec") or {}).get("autoscaling") and not owner["spec"].get("canary"):
            # A model that scales to zero: its route leaves the activator once a pod is Ready.
            refresh_route(owner, None, logger, primary=live)
    else:  # the canary's: its Ready pods move the route's weights
        found = watched.children(owner, canary=live)
        refresh_route(owner, live, logger)
    refresh_status(owner, found, logger)


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels=CHILD_LABELS)
def hpa_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    owner, watched = _repaired(body, type, memo, logger, kwargs)
    if owner is None or type == "DELETED":
        return
    found = watched.children(owner, hpa=body)
    refresh_scale_down(owner, found, logger)
    refresh_status(owner, found, logger)


@kopf.on.event("v1", "services", labels=CHILD_LABELS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=CHILD_LABELS)
def service_or_pdb_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A Service or PodDisruptionBudget changed: only drift matters (no status from them)."""
    _repaired(body, type, memo, logger, kwargs)


@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
def pod_event(body: kopf.Body, namespace: str, logger: kopf.Logger, **kwargs: Any) -> None:
    """A runtime pod changed (scheduled, fetching, crashed, ready, gone): recompute its
    ModelService's status with the pods index, which already holds this event's pod.
    Pods are not repaired: their ReplicaSet owns them."""
    watched = Indexes.given(kwargs)
    instance = indexes.pod_instance(body)
    owner = indexes.indexed(watched.modelservices, namespace, instance) if instance else None
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    found = watched.children(owner)
    refresh_scale_down(owner, found, logger)
    refresh_status(owner, found, logger)


@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", labels=CHILD_LABELS)
@kopf.on.event("gateway.networking.k8s.io", "v1", "grpcroutes", labels=CHILD_LABELS)
def route_event(body: kopf.Body, type: str | None, logger: kopf.Logger, **kwargs: Any) -> None:
    """A route of ours changed (mostly its status: the Gateway's controller accepted it, or
    not): its owner's condition Routed follows. A route no Gateway wants any more (the
    operator's default Gateway gone) is deleted; one deleted while its owner still wants
    it is applied again."""
    watched = Indexes.given(kwargs)
    key = indexes.note_route(body, deleted=type == "DELETED")
    if key is None:
        return
    namespace, name, uid = key
    owner = indexes.indexed(watched.modelservices, namespace, name)
    if owner is None or owner["metadata"].get("uid") != uid:
        return
    if owner["metadata"].get("deletionTimestamp"):
        return
    spec = indexes.owner_spec(owner)
    if type != "DELETED" and spec is not None and gateway_of(spec) is None:
        remove_stale_route(owner, body, logger)
        return
    found = watched.children(owner)
    if type == "DELETED":  # drift: deleted while the spec still wants it (else a no-op)
        restore_routes(owner, found, logger)
    refresh_status(owner, found, logger)


@kopf.on.event("v1", "namespaces")
async def namespace_event(
    body: kopf.Body, type: str | None, logger: kopf.Logger, **kwargs: Any
) -> None:
    """A namespace going: drop what the indexes hold of it (purge.py). Purged when kopf
    stops its streams and again on its DELETED event (an old event a finishing worker
    processed in between may have re-indexed something). Async: kopf mutates its indexes
    on the event loop, and so does this."""
    if not kopf_compat.namespace_gone(type, body):
        return
    watched = Indexes.given(kwargs)
    dropped = purge(body, {
        "ModelServices": watched.modelservices, "Deployments": watched.deployments,
        "HPAs": watched.hpas, "pods": watched.pods,
    })  # fmt: skip
    if any(dropped.values()):
        logger.info(
            "namespace %s is gone: dropped from the operator's indexes what its watch did not "
            "report deleted: %s",
            (body.get("metadata") or {}).get("name"),
            ", ".join(f"{n} {what}" for what, n in dropped.items() if n),
        )
