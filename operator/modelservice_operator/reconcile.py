"""The reconcile of one ModelService: render every child, adopt, apply, drop a stale HPA,
and compute the status the result makes (the handler writes it through kopf's patch).

Every step is safe to repeat (server-side apply, never a blind create); API failures
become ReconcileError, raised from the KubeApiError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from modelservice_operator import FIELD_MANAGER
from modelservice_operator.indexes import owner_body
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.pods import PodDiagnosis, diagnose_pods
from modelservice_operator.progress import with_known_progress
from modelservice_operator.reasons import EventReason
from modelservice_operator.render import LABEL_MANAGED_BY, render_child, render_children
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.status import compute_status


class ReconcileError(Exception):
    """The API server refused or failed a call while reconciling (wraps KubeApiError)."""


def normal_event(owner: Mapping[str, Any], *, reason: EventReason, message: str) -> None:
    """A Normal event on the ModelService (kopf.info would be dropped: posting.level is
    WARNING so that kopf's own INFO log lines do not become events)."""
    obj = owner_body(owner)
    kopf.event(obj, type="Normal", reason=reason.value, message=message)  # type: ignore[arg-type]


def desired_children(
    owner: Mapping[str, Any], spec: ModelServiceSpec, default_image: str
) -> list[dict[str, Any]]:
    """Every child the spec renders, adopted by the owner."""
    meta = owner["metadata"]
    children = render_children(meta["name"], meta["namespace"], spec, default_image)
    kopf.adopt(children, owner=owner_body(owner))  # type: ignore[arg-type]
    return children


def desired_child(
    kind: str, owner: Mapping[str, Any], spec: ModelServiceSpec, default_image: str
) -> dict[str, Any] | None:
    """The one child of `kind` the spec renders, adopted (None if it renders none)."""
    meta = owner["metadata"]
    child = render_child(kind, meta["name"], meta["namespace"], spec, default_image)
    if child is not None:
        kopf.adopt(child, owner=owner_body(owner))  # type: ignore[arg-type]
    return child


def apply_child(child: Mapping[str, Any]) -> dict[str, Any]:
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


def remove_stale_hpa(namespace: str, name: str) -> bool:
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
    default_image: str,
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
    applied: dict[str, dict[str, Any]] = {}
    for child in desired_children(snapshot, spec, default_image):
        applied[child["kind"]] = apply_child(child)
    if spec.autoscaling is None and may_have_hpa and remove_stale_hpa(namespace, name):
        normal_event(
            snapshot,
            reason=EventReason.HPA_REMOVED,
            message="autoscaling removed: deleted the HorizontalPodAutoscaler; "
            f"replicas fixed at {spec.fixed_replicas}",
        )
    kinds, spec_hash = ", ".join(applied), spec.pod_template_hash
    logger.info("applied %s (spec hash %s)", kinds, spec_hash)
    normal_event(
        snapshot, reason=EventReason.APPLIED, message=f"applied {kinds} (spec hash {spec_hash})"
    )
    if spec.autoscaling is not None and spec.replicas is not None:
        normal_event(
            snapshot,
            reason=EventReason.REPLICAS_IGNORED,
            message=f"spec.replicas={spec.replicas} is ignored while spec.autoscaling is set: "
            "the HorizontalPodAutoscaler owns the replica count "
            f"({spec.autoscaling.min_replicas}..{spec.autoscaling.max_replicas})",
        )
    diagnosis = with_known_progress(meta, diagnose_pods(pods, spec))
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
