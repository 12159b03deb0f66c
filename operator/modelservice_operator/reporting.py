"""Status reporting: a ModelService's status as its children make it, written when it
changed, and a Warning event once per pod failure.

`observedGeneration` belongs to the reconcile (reconcile.py): nothing here writes it, and
nothing here writes before the first reconcile has (that reconcile's own status write comes
back as a ModelService event, which refreshes again, so the last word is always the
children's). Nor does it overwrite a refused spec's status: only a reconcile of a new spec
may. A Failed phase from the pods is the children's own: it goes when they recover.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from modelservice_operator.indexes import ROUTES, Children, owner_body, owner_spec, routes_of
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.memory import OwnerMemory, owner_key
from modelservice_operator.pods import PodDiagnosis, diagnose_pods
from modelservice_operator.progress import Starting, track_start, with_known_progress
from modelservice_operator.reasons import WARNING_REASONS, ConditionType
from modelservice_operator.reconcile import (
    routes_served,
    traffic_plan,
    zero_plan,
)
from modelservice_operator.status import compute_status, refused
from modelservice_operator.writes import (
    ReconcileError,
)

# The pod failure last reported per ModelService (PodDiagnosis.signature), so that the
# Warning event comes once per failure and not with every pod event.
REPORTED: OwnerMemory[tuple[str, str]] = OwnerMemory()


def _ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ConditionType.READY:
            return c
    return {}


def report_pod_failure(
    owner: Mapping[str, Any], status: Mapping[str, Any], diagnosis: PodDiagnosis | None
) -> None:
    """A Warning event on the ModelService when its status newly blames a pod (a failed
    fetch, a crashed runtime, an image pull, no node); nothing while the same failure
    goes on, however many pod events it takes. A failure that clears and comes back is
    reported again."""
    key = owner_key(owner["metadata"])
    ready = _ready_condition(status)
    if (
        diagnosis is None
        or diagnosis.reason not in WARNING_REASONS
        or ready.get("reason") != diagnosis.reason.value
    ):
        REPORTED.pop(key)
        return
    signature = diagnosis.signature
    if REPORTED.update(key, lambda _: signature) == signature:
        return
    before = _ready_condition(owner.get("status"))
    if (before.get("reason"), before.get("message")) == (ready["reason"], ready["message"]):
        return  # reported before this process started: the status already says so
    obj = owner_body(owner)
    kopf.warn(obj, reason=ready["reason"], message=ready["message"])  # type: ignore[arg-type]


def children_status(
    owner: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
    progress: Callable[[PodDiagnosis | None], PodDiagnosis | None] = lambda found: found,
    canary: Mapping[str, Any] | None = None,
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
    spec = owner_spec(owner)
    if spec is None:
        return None
    pods = list(pods)
    diagnosis = progress(diagnose_pods(pods, spec))
    canary_spec = spec.canary_revision
    try:
        plan = traffic_plan(owner, spec) if canary_spec is not None else None
        routed, grpc_routed = routes_served(spec)
        zero = zero_plan(spec)
    except ReconcileError:
        return None  # API discovery failed: keep the status until the next event
    status = compute_status(
        name=meta["name"], namespace=meta["namespace"], generation=generation, spec=spec,
        deployment=deployment, hpa=hpa, previous=previous, diagnosis=diagnosis, plan=plan,
        canary=canary,
        canary_diagnosis=diagnose_pods(pods, canary_spec) if canary_spec is not None else None,
        routed=routed, grpc_routed=grpc_routed, zero_plan=zero, routes=routes_of(owner),
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
    found: Children,
    logger: logging.Logger | Any,
    *,
    report: bool = True,
) -> None:
    """Recompute the owner's status from its children and patch it when it changed (and,
    with `report`, post a Warning event for a new pod failure)."""
    meta = owner["metadata"]
    pods = list(found.pods)

    def known_progress(diagnosis: PodDiagnosis | None) -> PodDiagnosis | None:
        track_start(owner, found.deployment, found.hpa, pods, diagnosis, found.canary)
        return with_known_progress(meta, diagnosis)

    recomputed = children_status(
        owner, found.deployment, found.hpa, pods, known_progress, found.canary
    )
    if recomputed is None:
        return
    status, diagnosis = recomputed
    if report:
        report_pod_failure(owner, status, diagnosis)
    update = status_update(owner.get("status") or {}, status)
    if update is None:
        return
    try:
        client().patch_status(meta["namespace"], meta["name"], update)
    except KubeApiError as e:
        if e.status != 404:
            logger.warning("could not update status of %s: %s", meta["name"], e)


def refresh_from_progress(start: Starting, logger: logging.Logger) -> None:
    """The progress poller's refresh: a new log line of a starting pod, from the state the
    handlers last saw (no Warning events: those came with that state)."""
    found = Children(start.deployment, start.hpa, list(start.pods), start.canary)
    refresh_status(start.owner, found, logger, report=False)


def children_may_update(owner: Mapping[str, Any]) -> bool:
    """A ModelService event re-checks the status against the children only when the
    reconcile has written one (a phase) and the object is not being deleted."""
    meta = owner.get("metadata") or {}
    return not meta.get("deletionTimestamp") and bool((owner.get("status") or {}).get("phase"))


def forget(meta: Mapping[str, Any]) -> None:
    REPORTED.pop(owner_key(meta))
    ROUTES.pop(owner_key(meta))
