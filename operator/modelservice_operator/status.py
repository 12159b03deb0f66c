"""ModelService status: its schema (pydantic, generated into the CRD) and how it is derived.

`compute_status` is pure: from the validated spec, the live Deployment and HPA (as dicts,
or None) and the previous status it computes the phase, replica counts, URL and the
conditions Ready / Available / Progressing / ScalingLimited / ReplicasIgnored. Condition
`lastTransitionTime` only moves when a condition's status flips, as in core types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelservice_operator.spec import ModelServiceSpec


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionType(enum.StrEnum):
    READY = "Ready"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    SCALING_LIMITED = "ScalingLimited"
    REPLICAS_IGNORED = "ReplicasIgnored"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    INVALID_SPEC = "InvalidSpec"
    RECONCILE_FAILED = "ReconcileFailed"
    DEPLOYMENT_MISSING = "DeploymentMissing"
    ALL_REPLICAS_READY = "AllReplicasReady"
    PODS_NOT_READY = "PodsNotReady"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    SCALED_TO_ZERO = "ScaledToZero"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    NO_REPLICAS_AVAILABLE = "NoReplicasAvailable"
    AT_MAX_REPLICAS = "AtMaxReplicas"
    AT_MIN_REPLICAS = "AtMinReplicas"
    RATE_LIMITED = "RateLimited"
    WITHIN_RANGE = "DesiredWithinRange"
    HPA_PENDING = "HorizontalPodAutoscalerPending"
    AUTOSCALING_ENABLED = "AutoscalingEnabled"


class _StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Condition(_StatusModel):
    """One observation about the ModelService, as in core/v1 conditions."""

    type: ConditionType = Field(description="Condition type.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed for."
    )


class ModelServiceStatus(_StatusModel):
    """Observed state of a ModelService, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last reconciled."
    )
    phase: Phase | None = Field(
        default=None, description="Pending, Progressing, Ready, Degraded or Failed."
    )
    url: str | None = Field(default=None, description="In-cluster URL of the runtime Service.")
    replicas: int | None = Field(default=None, description="Runtime pods that exist now.")
    ready_replicas: int | None = Field(default=None, description="Runtime pods that are ready.")
    desired_replicas: int | None = Field(
        default=None, description="Pods wanted now (spec.replicas, or the HPA's choice)."
    )
    replica_summary: str | None = Field(
        default=None, description="'current/desired' pods, for kubectl get."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the runtime pods (scale subresource)."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Available, Progressing, ScalingLimited, ..."
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(ctype: ConditionType, ok: bool | None, reason: Reason, message: str) -> dict[str, Any]:
    status = (
        ConditionStatus.UNKNOWN
        if ok is None
        else ConditionStatus.TRUE
        if ok
        else ConditionStatus.FALSE
    )
    return {"type": ctype.value, "status": status.value, "reason": reason.value, "message": message}


def _merge_conditions(
    new: list[dict[str, Any]],
    previous: list[Mapping[str, Any]],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out = []
    for c in new:
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"]
        c["lastTransitionTime"] = (old.get("lastTransitionTime") if same else None) or now
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def _dep_condition(dep: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def rollout_complete(dep: Mapping[str, Any]) -> bool:
    """`kubectl rollout status` semantics: every pod updated and available, none old."""
    meta, spec, st = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
    want = spec.get("replicas", 1)
    if st.get("observedGeneration", 0) < meta.get("generation", 0):
        return False
    updated = st.get("updatedReplicas", 0)
    return (
        updated >= want
        and st.get("replicas", 0) <= updated
        and st.get("availableReplicas", 0) >= updated
    )


def _scaling_limited(
    spec: ModelServiceSpec, hpa: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    a = spec.autoscaling
    if a is None:
        return None
    bounds = f"minReplicas {a.min_replicas}, maxReplicas {a.max_replicas}"
    hst = (hpa or {}).get("status") or {}
    for c in hst.get("conditions") or []:
        if c.get("type") != "ScalingLimited":
            continue
        detail = f"{c.get('message', '')} ({bounds})".strip()
        if c.get("status") != "True":
            return _cond(ConditionType.SCALING_LIMITED, False, Reason.WITHIN_RANGE, detail)
        reason = {
            "TooManyReplicas": Reason.AT_MAX_REPLICAS,
            "TooFewReplicas": Reason.AT_MIN_REPLICAS,
        }.get(c.get("reason", ""), Reason.RATE_LIMITED)
        return _cond(ConditionType.SCALING_LIMITED, True, reason, detail)
    current = hst.get("currentReplicas")
    if hpa is None or current is None:
        return _cond(
            ConditionType.SCALING_LIMITED,
            None,
            Reason.HPA_PENDING,
            f"waiting for the HorizontalPodAutoscaler to report ({bounds})",
        )
    if current >= a.max_replicas:
        return _cond(
            ConditionType.SCALING_LIMITED,
            True,
            Reason.AT_MAX_REPLICAS,
            f"at maxReplicas ({bounds})",
        )
    if current <= a.min_replicas:
        return _cond(
            ConditionType.SCALING_LIMITED,
            True,
            Reason.AT_MIN_REPLICAS,
            f"at minReplicas ({bounds})",
        )
    return _cond(ConditionType.SCALING_LIMITED, False, Reason.WITHIN_RANGE, bounds)


def compute_status(
    *,
    name: str,
    namespace: str,
    generation: int | None,
    spec: ModelServiceSpec,
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """The status dict (camelCase, as in the CRD) for a valid spec and its children."""
    from modelservice_operator.render import selector_string, service_url

    now = now or now_rfc3339()
    previous = previous or {}
    dep_status = (deployment or {}).get("status") or {}
    current = dep_status.get("replicas", 0)
    ready = dep_status.get("readyReplicas", 0)
    if spec.autoscaling is None:
        desired = spec.fixed_replicas
    else:
        hpa_desired = ((hpa or {}).get("status") or {}).get("desiredReplicas")
        dep_replicas = ((deployment or {}).get("spec") or {}).get("replicas")
        desired = hpa_desired or dep_replicas or spec.autoscaling.min_replicas

    conds: list[dict[str, Any]] = []
    progressing = _dep_condition(deployment or {}, "Progressing")
    stuck = progressing.get("reason") == "ProgressDeadlineExceeded"
    complete = deployment is not None and rollout_complete(deployment)
    counts = f"{ready}/{desired} replicas ready"

    if deployment is None:
        phase, reason, msg = Phase.PENDING, Reason.DEPLOYMENT_MISSING, "waiting for the Deployment"
    elif stuck:
        phase = Phase.DEGRADED if ready else Phase.FAILED
        reason, msg = Reason.PROGRESS_DEADLINE_EXCEEDED, f"{counts}: {progressing.get('message')}"
    elif desired == 0:
        phase, reason, msg = Phase.PENDING, Reason.SCALED_TO_ZERO, "scaled to zero replicas"
    elif complete and ready >= desired:
        phase, reason, msg = Phase.READY, Reason.ALL_REPLICAS_READY, counts
    elif ready == 0:
        phase, reason = Phase.PENDING, Reason.PODS_NOT_READY
        msg = f"{counts}: waiting for pods to be scheduled, fetch the model and pass readiness"
    elif not complete:
        phase, reason, msg = Phase.PROGRESSING, Reason.ROLLING_OUT, f"{counts}: rolling out"
    else:
        phase, reason, msg = Phase.DEGRADED, Reason.REPLICAS_UNAVAILABLE, counts
    conds.append(_cond(ConditionType.READY, phase is Phase.READY, reason, msg))
    conds.append(
        _cond(
            ConditionType.AVAILABLE,
            ready > 0,
            Reason.MINIMUM_REPLICAS_AVAILABLE if ready else Reason.NO_REPLICAS_AVAILABLE,
            counts,
        )
    )
    if stuck:
        conds.append(
            _cond(
                ConditionType.PROGRESSING,
                False,
                Reason.PROGRESS_DEADLINE_EXCEEDED,
                str(progressing.get("message", "")),
            )
        )
    elif complete:
        conds.append(
            _cond(
                ConditionType.PROGRESSING,
                False,
                Reason.ROLLOUT_COMPLETE,
                "the Deployment has rolled out",
            )
        )
    else:
        conds.append(
            _cond(
                ConditionType.PROGRESSING,
                True,
                Reason.ROLLING_OUT,
                f"{dep_status.get('updatedReplicas', 0)}/{desired} pods updated",
            )
        )
    limited = _scaling_limited(spec, hpa)
    if limited is not None:
        conds.append(limited)
    if spec.autoscaling is not None and spec.replicas is not None:
        conds.append(
            _cond(
                ConditionType.REPLICAS_IGNORED,
                True,
                Reason.AUTOSCALING_ENABLED,
                f"spec.replicas={spec.replicas} is ignored: spec.autoscaling is set, so the "
                "HorizontalPodAutoscaler owns the replica count "
                f"({spec.autoscaling.min_replicas}..{spec.autoscaling.max_replicas})",
            )
        )

    return {
        "observedGeneration": generation,
        "phase": phase.value,
        "url": service_url(name, namespace),
        "replicas": current,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "replicaSummary": f"{current}/{desired}",
        "selector": selector_string(name),
        "conditions": _merge_conditions(conds, previous.get("conditions") or [], generation, now),
    }


def invalid_status(
    *,
    message: str,
    generation: int | None,
    previous: Mapping[str, Any] | None,
    now: str | None = None,
    reason: Reason = Reason.INVALID_SPEC,
) -> dict[str, Any]:
    """Status for a spec the operator refuses (or cannot reconcile): phase Failed."""
    now = now or now_rfc3339()
    previous = previous or {}
    conds = [_cond(ConditionType.READY, False, reason, message)]
    keep = [c for c in previous.get("conditions") or [] if c.get("type") != "Ready"]
    return {
        "observedGeneration": generation,
        "phase": Phase.FAILED.value,
        "conditions": _merge_conditions(conds, previous.get("conditions") or [], generation, now)
        + [dict(c) for c in keep],
    }
