"""Scale to zero's I/O (the decisions are scaling.py's): the idle check and the wake.

Like progress.py, one thread instead of a kopf timer (a timer would put a finalizer on
every ModelService). The handlers note each ModelService whose scale to zero runs
(`track`); every SCALE_INTERVAL_S the thread reads each noted one afresh (the
ModelService, its Deployment, its primary pods and their /metrics) and:

- up, idle for idleSeconds: writes status.scaleToZero atZero (first, so that a restart
  in between still knows) and points the HTTPRoute at the activator; at the next check,
  unless a request came in meanwhile (then atZero is cleared again), sets the Deployment's
  replicas to 0 through the scale subresource (with an HPA the operator does not own that
  field, and the HPA stands aside while its target has 0 replicas);
- at zero, and the activator asked (annotation scaling.WAKE_ANNOTATION): `wake` sets the
  replicas back (max(1, minReplicas)) and clears atZero. The ModelService's own event does
  the same at once (handlers.modelservice_event); the thread is the backstop.

While models are held, their Services' hold slices list the activator's Ready pods: a
second thread watches the activator's EndpointSlices (its namespace, a server-side label
selector) and, when they change, the first rewrites those slices at once
(`follow_activator`) instead of at its next check.

Everything lives in Kubernetes objects (the replicas, status.scaleToZero, the annotation),
so an operator restart resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from modelservice_cli import runtime_paths

from modelservice_operator import indexes
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.memory import OwnerMemory, owner_key
from modelservice_operator.reasons import EventReason
from modelservice_operator.reconcile import (
    HELD_BY,
    ROUTED_TO_ACTIVATOR,
    activator_pods,
    refresh_route,
    sync_hold,
    to_activator,
    zero_plan,
)
from modelservice_operator.render import HTTP_PORT, LABEL_INSTANCE, PRIMARY, REVISION_LABEL
from modelservice_operator.scaling import (
    AT_ZERO,
    SINCE,
    Activity,
    called_off_state,
    enabled,
    moved,
    next_scale_state,
    request_activity,
    scale_state,
    wake_replicas,
    wake_requested,
    woken_state,
)
from modelservice_operator.service_hold import ActivatorPods, slices_of_service
from modelservice_operator.spec import InvalidSpec, ModelServiceSpec, parse_spec
from modelservice_operator.traffic import ActivatorRef, activator_of
from modelservice_operator.writes import (
    ReconcileError,
    normal_event,
)

SCALE_INTERVAL_S = 5.0
# The watch of the activator's EndpointSlices is opened again after this long (the API
# server ends it), and after a failure once SCALE_INTERVAL_S has passed.
ACTIVATOR_WATCH_S = 300
METRICS_TIMEOUT_S = 3.0

# (namespace, name, uid) -> nothing but presence: which ModelServices to check.
TRACKED: OwnerMemory[bool] = OwnerMemory()
# (namespace, name, uid) -> status.scaleToZero.since of the stay at zero the events last
# woke it from. Two activators asking at once give two events whose bodies both predate the
# first wake's status write; the second must not wake it (and post ScaledFromZero) again.
WOKEN_FROM: OwnerMemory[str] = OwnerMemory()
_thread: threading.Thread | None = None
_watch_thread: threading.Thread | None = None


def track(owner: Mapping[str, Any], spec: ModelServiceSpec | None) -> None:
    """Note (or forget) a ModelService for the idle check, from an event of it."""
    key = owner_key(owner["metadata"])
    if spec is not None and enabled(zero_plan(spec)):
        TRACKED.put(key, True)
    else:
        TRACKED.pop(key)


def forget(meta: Mapping[str, Any]) -> None:
    TRACKED.pop(owner_key(meta))
    WOKEN_FROM.pop(owner_key(meta))
    ROUTED_TO_ACTIVATOR.pop(owner_key(meta))
    HELD_BY.pop(owner_key(meta))


def _now() -> datetime:
    return datetime.now(UTC)


def scale(namespace: str, name: str, replicas: int) -> None:
    client().merge_patch("Deployment", namespace, name, {"spec": {"replicas": replicas}}, "scale")


def wake(owner: Mapping[str, Any], spec: ModelServiceSpec, logger: logging.Logger | Any) -> None:
    """Back from zero: the Deployment's replicas first, then status (a crash in between
    leaves atZero set with a wake asked: the next check wakes it again)."""
    meta = owner["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    replicas = wake_replicas(spec)
    scale(namespace, name, replicas)
    client().patch_status(namespace, name, {"scaleToZero": woken_state(_now())})
    logger.info("ModelService %s/%s: woken from zero (%d replicas)", namespace, name, replicas)
    normal_event(
        owner,
        reason=EventReason.WOKEN,
        message=f"a request arrived at zero: scaled the Deployment to {replicas} replicas; "
        "requests are held until a pod is Ready",
    )


def wake_if_asked(owner: Mapping[str, Any], logger: logging.Logger | Any) -> bool:
    """From a ModelService event: wake it when the activator asked. True when it did."""
    spec = indexes.owner_spec(owner)
    if spec is None or not enabled(zero_plan(spec)):
        return False
    annotations = (owner.get("metadata") or {}).get("annotations") or {}
    if not wake_requested(owner.get("status"), annotations):
        return False
    key, since = owner_key(owner["metadata"]), scale_state(owner.get("status")).get(SINCE)
    if since and WOKEN_FROM.update(key, lambda _: str(since)) == since:
        return False  # woken from this stay already: this event's body predates that wake
    try:
        wake(owner, spec, logger)
    except KubeApiError as e:
        WOKEN_FROM.pop(key)  # not woken: the next request or check tries again
        logger.warning("could not wake %s from zero: %s", owner["metadata"]["name"], e)
        return False
    return True


def _ready(pod: Mapping[str, Any]) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _metrics(ip: str) -> str:
    url = f"http://{ip}:{HTTP_PORT}{runtime_paths.METRICS}"
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as resp:
        return resp.read().decode(errors="replace")


def observe(namespace: str, name: str, replicas: int) -> Activity | None:
    """The primary pods' request activity; None unless every wanted pod is Ready and was
    read (a pod still loading its model must never look idle)."""
    selector = f"{LABEL_INSTANCE}={name},{REVISION_LABEL}={PRIMARY}"
    pods = [
        p
        for p in client().list_objects("Pod", namespace, selector)
        if not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    if replicas <= 0 or len(pods) < replicas or not all(_ready(p) for p in pods):
        return None
    ips = [(p.get("status") or {}).get("podIP") for p in pods]
    if not all(ips):
        return None
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(ips))) as pool:
            texts = list(pool.map(_metrics, [str(ip) for ip in ips]))
    except OSError:
        return None
    return request_activity(texts)


class _ActivatorPodsOnce:
    """The activator's Ready pods, read at most once per pass of the checks (and only when
    a model at zero needs them)."""

    def __init__(self) -> None:
        self._pods: ActivatorPods | None = None

    def __call__(self, activator: ActivatorRef) -> ActivatorPods:
        if self._pods is None:
            self._pods = activator_pods(activator)
        return self._pods


def _read(
    namespace: str, name: str, uid: str | None = None
) -> tuple[dict[str, Any], ModelServiceSpec, dict[str, Any] | None] | None:
    """A ModelService whose scale to zero runs, read afresh, and its Deployment as it lives
    (None: absent); None when the ModelService is gone, being deleted, not the one of `uid`,
    or its spec is invalid or no longer asks for zero."""
    kube = client()
    body = kube.get("ModelService", namespace, name)
    meta = (body or {}).get("metadata") or {}
    if body is None or meta.get("deletionTimestamp") or uid not in (None, meta.get("uid")):
        return None
    owner = indexes.snapshot(body)
    try:
        spec = parse_spec(owner["spec"], name)
    except InvalidSpec:
        return None
    if not enabled(zero_plan(spec)):
        return None
    return owner, spec, kube.get("Deployment", namespace, name)


def check(
    namespace: str,
    name: str,
    logger: logging.Logger | Any,
    pods_of: _ActivatorPodsOnce | None = None,
) -> None:
    """One idle check (or wake, or repair) of one ModelService, read afresh; while its
    routes go to the activator, its Service's hold slice follows the activator's pods."""
    kube = client()
    read = _read(namespace, name)
    if read is None:
        return
    owner, spec, deployment = read
    if deployment is None:
        return
    replicas = int((deployment.get("spec") or {}).get("replicas") or 0)
    status = owner.get("status") or {}
    state = scale_state(status)
    activator = to_activator(owner, spec, deployment)
    if activator is not None:  # the activator's pods may have changed, or its slice gone
        pods = (pods_of or _ActivatorPodsOnce())(activator)
        sync_hold(owner, activator, pods=pods, recheck=True)
    assert spec.autoscaling is not None
    idle = spec.autoscaling.idle_seconds
    if state.get(AT_ZERO):
        if wake_requested(status, owner["metadata"].get("annotations") or {}):
            wake(owner, spec, logger)
        elif replicas > 0:
            # The route went to the activator one check ago: the pods go now, unless a
            # request came in meanwhile.
            seen = observe(namespace, name, replicas)
            if seen is not None and moved(state, seen):
                kube.patch_status(namespace, name, {"scaleToZero": called_off_state(seen, _now())})
                logger.info("ModelService %s/%s: a request came in, stays up", namespace, name)
                return
            scale(namespace, name, 0)
            logger.info("ModelService %s/%s: scaled to zero after %d s idle", namespace, name, idle)
            normal_event(
                owner,
                reason=EventReason.SCALED_TO_ZERO,
                message=f"no request for {idle} s (autoscaling.idleSeconds): scaled the "
                "Deployment to zero; its routes and its Service send to the activator, which "
                "holds requests and wakes it",
            )
        return
    if replicas == 0:  # a wake cut short before its status write: finish it
        wake(owner, spec, logger)
        return
    step = next_scale_state(state, observe(namespace, name, replicas), _now(), idle)
    if step.patch is not None:
        kube.patch_status(namespace, name, {"scaleToZero": step.patch})
    if step.scale_down:
        # The route to the activator now, the pods at the next check (see above), so that
        # the Gateway has the new route before they go.
        owner["status"] = {**status, "scaleToZero": {**state, **(step.patch or {})}}
        refresh_route(owner, None, logger, primary=None)


def check_once(logger: logging.Logger | Any) -> None:
    pods_of = _ActivatorPodsOnce()
    for (namespace, name, _), _tracked in TRACKED.items():
        try:
            check(namespace, name, logger, pods_of)
        except ReconcileError as e:
            logger.warning("scale-to-zero check of %s/%s failed: %s", namespace, name, e)
        except KubeApiError as e:
            if e.status != 404:
                logger.warning("scale-to-zero check of %s/%s failed: %s", namespace, name, e)
        except Exception:  # one ModelService must not stop the others' checks
            logger.exception("scale-to-zero check of %s/%s failed", namespace, name)


def follow_activator(logger: logging.Logger | Any) -> None:
    """The hold slices of the models held now, rewritten for the activator's Ready pods as
    they are (a pod replaced, added or gone); each model read afresh, and left alone once
    its routes no longer go to the activator (sync_hold writes only what changed)."""
    activator = activator_of()
    held = HELD_BY.items()
    if activator is None or not held:
        return
    pods = activator_pods(activator)
    for (namespace, name, uid), _pods in held:
        try:
            read = _read(namespace, name, uid)
            if read is not None and to_activator(*read) is not None:
                sync_hold(read[0], activator, pods=pods)
        except (ReconcileError, KubeApiError) as e:
            logger.warning("hold slice of %s/%s not updated: %s", namespace, name, e)


_activator_changed = threading.Event()


def _watch_activator() -> None:
    logger = logging.getLogger("modelservice_operator.scaler")
    last_error = ""
    while True:
        activator = activator_of()
        if activator is None:
            time.sleep(SCALE_INTERVAL_S)
            continue
        selector = slices_of_service(activator.name)
        try:
            for _event in client().watch(
                "EndpointSlice", activator.namespace, selector, ACTIVATOR_WATCH_S
            ):
                _activator_changed.set()
            last_error = ""
        except KubeApiError as e:
            if str(e) != last_error:  # once, not every few seconds
                logger.warning(
                    "cannot watch the activator's EndpointSlices (%s): hold slices follow its "
                    "pods at the checks every %g s only", e, SCALE_INTERVAL_S,
                )  # fmt: skip
            last_error = str(e)
            time.sleep(SCALE_INTERVAL_S)


def _run_forever() -> None:
    logger = logging.getLogger("modelservice_operator.scaler")
    next_check = time.monotonic() + SCALE_INTERVAL_S
    while True:
        changed = _activator_changed.wait(max(0.0, next_check - time.monotonic()))
        try:
            if changed:
                _activator_changed.clear()
                follow_activator(logger)
            else:
                next_check = time.monotonic() + SCALE_INTERVAL_S
                check_once(logger)
        except Exception:  # the thread must outlive any one failure
            logger.exception("scale-to-zero checks failed")


def start_scaler() -> None:
    """Start the threads once per process (the tests may run the operator several times)."""
    global _thread, _watch_thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_run_forever, name="scale-to-zero", daemon=True)
        _thread.start()
    if _watch_thread is None or not _watch_thread.is_alive():
        _watch_thread = threading.Thread(
            target=_watch_activator, name="activator-watch", daemon=True
        )
        _watch_thread.start()
