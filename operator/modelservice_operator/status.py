"""ModelService status: how it is derived (its schema is status_schema.py).

`compute_status` is pure: from the validated spec, the live Deployment and HPA (as dicts,
or None), what `pods.diagnose_pods` found in the runtime pods and the previous status it
computes the phase, replica counts, URL and the conditions Ready / Available / Progressing
/ ScalingLimited / ReplicasIgnored (and CanaryTraffic, ScaleToZero, Routed where they
apply). Each is one named decision: `observe` reads the
children's numbers, `ready_verdict` picks the phase and the Ready condition's reason, and
one function per other condition. Condition `lastTransitionTime` only moves when a
condition's status flips, as in core types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelservice_operator.pods import PodDiagnosis
from modelservice_operator.reasons import (
    FAILURE_REASONS,
    WARNING_REASONS,
    ConditionStatus,
    ConditionType,
    Phase,
    Reason,
)
from modelservice_operator.render import selector_string, service_url
from modelservice_operator.scaling import ScaleToZeroPlan, at_zero, enabled
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.traffic import (
    SplitMode,
    TrafficPlan,
    gateway_where,
    grpc_route_host,
    replica_split,
    route_host,
    route_weights,
)

__all__ = [
    "FAILURE_REASONS",
    "WARNING_REASONS",
    "ConditionStatus",
    "ConditionType",
    "Phase",
    "Reason",
    "compute_status",
    "invalid_status",
    "refused",
]


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


def scaling_limited_condition(
    spec: ModelServiceSpec, hpa: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Whether the HPA holds the count at a bound (its own ScalingLimited condition, else
    its current count against the bounds); no such condition without autoscaling."""
    a = spec.autoscaling
    if a is None:
        return None
    bounds = f"minReplicas {a.min_replicas}, maxReplicas {a.max_replicas}"
    hst = (hpa or {}).get("status") or {}
    for c in hst.get("conditions") or []:
        if c.get("type") != "ScalingLimited":
            continue
        detail = f"{c.get('message', '')} ({bounds})".strip()
        if c.get("status") != ConditionStatus.TRUE:
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


@dataclass(frozen=True)
class Observed:
    """What the children say, in the numbers the decisions read: pods that exist, are
    ready and updated, how many are wanted, and the Deployment's rollout."""

    deployment_exists: bool
    current: int
    ready: int
    updated: int
    desired: int
    complete: bool  # rollout_complete
    progressing: Mapping[str, Any]  # the Deployment's Progressing condition ({} if none)

    @property
    def stuck(self) -> bool:
        """The Deployment gave up waiting for its rollout (progressDeadlineSeconds)."""
        return self.progressing.get("reason") == "ProgressDeadlineExceeded"

    @property
    def serving(self) -> bool:
        return self.complete and self.ready >= self.desired

    @property
    def counts(self) -> str:
        return f"{self.ready}/{self.desired} replicas ready"


def desired_replicas(
    spec: ModelServiceSpec,
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    plan: TrafficPlan | None = None,
    zero: bool = False,
) -> int:
    """Pods wanted now: none while scaled to zero (`zero`), the primary's share of a canary
    split by replica count, else spec.replicas without autoscaling, else the HPA's choice,
    else the Deployment's replicas, else autoscaling.minReplicas."""
    if zero:
        return 0
    if plan is not None and plan.primary_replicas is not None:
        return plan.primary_replicas
    if spec.autoscaling is None:
        return spec.fixed_replicas
    hpa_desired = ((hpa or {}).get("status") or {}).get("desiredReplicas")
    dep_replicas = ((deployment or {}).get("spec") or {}).get("replicas")
    return int(hpa_desired or dep_replicas or spec.autoscaling.min_replicas)


def observe(
    spec: ModelServiceSpec,
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    plan: TrafficPlan | None = None,
    zero: bool = False,
) -> Observed:
    dep_status = (deployment or {}).get("status") or {}
    return Observed(
        deployment_exists=deployment is not None,
        current=dep_status.get("replicas", 0),
        ready=dep_status.get("readyReplicas", 0),
        updated=dep_status.get("updatedReplicas", 0),
        desired=desired_replicas(spec, deployment, hpa, plan, zero),
        complete=deployment is not None and rollout_complete(deployment),
        progressing=_dep_condition(deployment or {}, "Progressing"),
    )


@dataclass(frozen=True)
class Verdict:
    """The phase, and the Ready condition's reason and message."""

    phase: Phase
    reason: Reason
    message: str


def ready_verdict(seen: Observed, diagnosis: PodDiagnosis | None) -> Verdict:
    """The phase, most telling cause first.

    A pod failure is phase Failed while no replica is ready, else Degraded (before the
    Deployment's ProgressDeadlineExceeded: that only says how long, the pod says why; a
    failure kubelet keeps retrying, a fetch that fails each time, is still a failure); a
    pod still fetching or loading its model is Progressing (FetchingModel / LoadingModel);
    one no node can take is Pending (Unschedulable).
    """
    counts, ready, desired = seen.counts, seen.ready, seen.desired
    if not seen.deployment_exists:
        return Verdict(Phase.PENDING, Reason.DEPLOYMENT_MISSING, "waiting for the Deployment")
    if diagnosis is not None and diagnosis.failed and desired > 0 and not seen.serving:
        phase = Phase.DEGRADED if ready else Phase.FAILED
        return Verdict(phase, diagnosis.reason, f"{counts}: {diagnosis.message}")
    if seen.stuck:
        phase = Phase.DEGRADED if ready else Phase.FAILED
        message = f"{counts}: {seen.progressing.get('message')}"
        return Verdict(phase, Reason.PROGRESS_DEADLINE_EXCEEDED, message)
    if desired == 0:
        return Verdict(Phase.PENDING, Reason.SCALED_TO_ZERO, "scaled to zero replicas")
    if seen.serving:
        return Verdict(Phase.READY, Reason.ALL_REPLICAS_READY, counts)
    if ready == 0 and diagnosis is not None:
        phase = Phase.PENDING if diagnosis.reason is Reason.UNSCHEDULABLE else Phase.PROGRESSING
        return Verdict(phase, diagnosis.reason, f"{counts}: {diagnosis.message}")
    if ready == 0:
        waiting = "waiting for pods to be scheduled, fetch the model and pass readiness"
        return Verdict(Phase.PENDING, Reason.PODS_NOT_READY, f"{counts}: {waiting}")
    if not seen.complete:
        why = f"; {diagnosis.message}" if diagnosis is not None else ""
        return Verdict(Phase.PROGRESSING, Reason.ROLLING_OUT, f"{counts}: rolling out{why}")
    why = f": {diagnosis.message}" if diagnosis is not None else ""
    return Verdict(Phase.DEGRADED, Reason.REPLICAS_UNAVAILABLE, counts + why)


def available_condition(seen: Observed) -> dict[str, Any]:
    reason = Reason.MINIMUM_REPLICAS_AVAILABLE if seen.ready else Reason.NO_REPLICAS_AVAILABLE
    return _cond(ConditionType.AVAILABLE, seen.ready > 0, reason, seen.counts)


def progressing_condition(seen: Observed) -> dict[str, Any]:
    """False once rolled out or stuck (ProgressDeadlineExceeded); True while rolling out."""
    if seen.stuck:
        message = str(seen.progressing.get("message", ""))
        return _cond(ConditionType.PROGRESSING, False, Reason.PROGRESS_DEADLINE_EXCEEDED, message)
    if seen.complete:
        message = "the Deployment has rolled out"
        return _cond(ConditionType.PROGRESSING, False, Reason.ROLLOUT_COMPLETE, message)
    message = f"{seen.updated}/{seen.desired} pods updated"
    return _cond(ConditionType.PROGRESSING, True, Reason.ROLLING_OUT, message)


def replicas_ignored_condition(spec: ModelServiceSpec) -> dict[str, Any] | None:
    """True while spec.replicas is set beside spec.autoscaling; else no such condition."""
    a = spec.autoscaling
    if a is None or spec.replicas is None:
        return None
    return _cond(
        ConditionType.REPLICAS_IGNORED,
        True,
        Reason.AUTOSCALING_ENABLED,
        f"spec.replicas={spec.replicas} is ignored: spec.autoscaling is set, so the "
        "HorizontalPodAutoscaler owns the replica count "
        f"({a.min_replicas}..{a.max_replicas})",
    )


def _revision(
    deployment_name: str,
    spec: ModelServiceSpec,
    deployment: Mapping[str, Any] | None,
    desired: int,
    diagnosis: PodDiagnosis | None = None,
) -> dict[str, Any]:
    st = (deployment or {}).get("status") or {}
    out: dict[str, Any] = {
        "deployment": deployment_name,
        "modelUri": spec.model.uri,
        "replicas": st.get("replicas", 0),
        "readyReplicas": st.get("readyReplicas", 0),
        "desiredReplicas": desired,
    }
    if spec.model.sha256:
        out["modelSha256"] = spec.model.sha256
    if diagnosis is not None:
        out["message"] = diagnosis.message
    return out


def canary_status(
    name: str,
    spec: ModelServiceSpec,
    plan: TrafficPlan,
    seen: Observed,
    deployment: Mapping[str, Any] | None,
    canary: Mapping[str, Any] | None,
    canary_diagnosis: PodDiagnosis | None = None,
) -> dict[str, Any]:
    """status.canary: both revisions and the split in effect now (the route's weights as
    the canary's Ready pods allow them, or the share of ready pods behind one Service)."""
    assert spec.canary_revision is not None
    primary = _revision(name, spec, deployment, seen.desired)
    second = _revision(
        f"{name}-canary", spec.canary_revision, canary, plan.canary_replicas, canary_diagnosis
    )
    if plan.mode is SplitMode.ROUTE:
        split: tuple[int, int] | None = route_weights(
            plan, second["readyReplicas"], plan.canary_replicas
        )
    else:
        split = replica_split(primary["readyReplicas"], second["readyReplicas"])
    out: dict[str, Any] = {
        "trafficPercent": plan.percent,
        "mode": plan.mode.value,
        "primary": primary,
        "canary": second,
    }
    if split is not None:
        out["primaryWeight"], out["canaryWeight"] = split
    return out


def scale_to_zero_condition(
    plan: ScaleToZeroPlan | None, zero: bool, seen: Observed
) -> dict[str, Any] | None:
    """With autoscaling.minReplicas 0: True while scale to zero runs (reason AtZero while
    there), False with why it cannot; no such condition otherwise."""
    if plan is None:
        return None
    if plan.enabled and zero:
        left = f"; {seen.current} pods still stopping" if seen.current else ""
        message = f"at zero replicas for being idle; the next request wakes it{left}"
        return _cond(ConditionType.SCALE_TO_ZERO, True, Reason.AT_ZERO, message)
    return _cond(ConditionType.SCALE_TO_ZERO, plan.enabled, plan.reason, plan.message)


def canary_traffic_condition(plan: TrafficPlan | None) -> dict[str, Any] | None:
    """True while the split runs as asked (how, in the reason), False (CannotHonour) when
    it cannot; no such condition without a canary."""
    if plan is None:
        return None
    return _cond(ConditionType.CANARY_TRAFFIC, plan.honoured, plan.reason, plan.message)


# The route conditions (Gateway API, set by the Gateway's controller in status.parents)
# that say the Gateway routes as asked: the route attached, its backends resolved.
ROUTE_CONDITIONS = ("Accepted", "ResolvedRefs")


def routed_condition(
    routes: Sequence[Mapping[str, Any]], kinds: Sequence[str], gateway: str
) -> dict[str, Any]:
    """Whether the Gateway's controller took up the routes of `kinds` (HTTPRoute, and
    GRPCRoute where there is one), from their status (`routes`, as the operator last saw
    them): True once each is Accepted with ResolvedRefs at its current generation, False
    (with the controller's reason and message) when one is refused, Unknown while no
    controller has reported on one, or not on its current generation (a Gateway that does
    not exist, or whose controller is not running, never does)."""
    refused, waiting = [], []
    for kind in kinds:
        route = next((r for r in routes if r.get("kind") == kind), None)
        if route is None:
            waiting.append(f"{kind}: not found")
            continue
        meta = route.get("metadata") or {}
        what, generation = f"{kind} {meta.get('name')}", meta.get("generation")
        parents = (route.get("status") or {}).get("parents") or []
        if not parents:
            waiting.append(f"{what}: no Gateway controller has reported on it")
        for parent in parents:
            conds = {c.get("type"): c for c in parent.get("conditions") or []}
            for ctype in ROUTE_CONDITIONS:
                c = conds.get(ctype)
                seen = (c or {}).get("observedGeneration")
                if c is None or (seen is not None and generation is not None and seen < generation):
                    waiting.append(f"{what}: {ctype} not reported for its current version")
                elif c.get("status") != "True":
                    refused.append(
                        f"{what}: {ctype}={c.get('status')} ({c.get('reason')}): "
                        f"{c.get('message') or 'no message'}"
                    )
    if refused:
        return _cond(ConditionType.ROUTED, False, Reason.ROUTE_NOT_ACCEPTED, "; ".join(refused))
    if waiting:
        message = (
            f"waiting for the controller of Gateway {gateway} (does it exist, and does its "
            f"controller run?): {'; '.join(waiting)}"
        )
        return _cond(ConditionType.ROUTED, None, Reason.ROUTE_PENDING, message)
    message = f"{' and '.join(kinds)} accepted by Gateway {gateway}, backends resolved"
    return _cond(ConditionType.ROUTED, True, Reason.ROUTE_ACCEPTED, message)


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
    diagnosis: PodDiagnosis | None = None,
    plan: TrafficPlan | None = None,
    canary: Mapping[str, Any] | None = None,
    canary_diagnosis: PodDiagnosis | None = None,
    routed: bool = False,
    grpc_routed: bool = False,
    zero_plan: ScaleToZeroPlan | None = None,
    routes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The status dict (camelCase, as in the CRD) for a valid spec and its children;
    `diagnosis` (from `pods.diagnose_pods`) turns "pods not ready" into why (ready_verdict).
    With a canary, `plan` (traffic.plan_traffic) and the canary's Deployment and pods make
    status.canary and condition CanaryTraffic; the top-level fields stay the primary's.
    `routed`, `grpc_routed`: the HTTPRoute, the GRPCRoute are applied (status.gateway,
    gatewayHost and gatewayGrpcHost say where; `routes`, as last seen, make condition
    Routed). `zero_plan`: scale to zero's (scaling.py);
    while it runs and status.scaleToZero says at zero, none are wanted and the model is
    Ready (a request wakes it)."""
    previous = previous or {}
    zero = enabled(zero_plan) and at_zero(previous)
    seen = observe(spec, deployment, hpa, plan, zero)
    verdict = ready_verdict(seen, diagnosis)
    if zero:
        verdict = Verdict(
            Phase.READY,
            Reason.SCALED_TO_ZERO,
            "scaled to zero for being idle; the next request is held by the activator and wakes it",
        )
    conditions = [
        _cond(ConditionType.READY, verdict.phase is Phase.READY, verdict.reason, verdict.message),
        available_condition(seen),
        progressing_condition(seen),
        scaling_limited_condition(spec, hpa),
        replicas_ignored_condition(spec),
        canary_traffic_condition(plan),
        scale_to_zero_condition(zero_plan, zero, seen),
    ]
    if routed:
        kinds = ["HTTPRoute", "GRPCRoute"] if grpc_routed else ["HTTPRoute"]
        conditions.append(routed_condition(routes, kinds, gateway_where(spec, namespace)))
    # None (not absent) without a route or a canary: a merge patch then removes the old value.
    revisions = None
    if plan is not None and spec.canary is not None:
        revisions = canary_status(name, spec, plan, seen, deployment, canary, canary_diagnosis)
    return {
        "observedGeneration": generation,
        "phase": verdict.phase.value,
        "url": service_url(name, namespace),
        "gateway": gateway_where(spec, namespace) if routed else None,
        "gatewayHost": route_host(name, namespace) if routed else None,
        "gatewayGrpcHost": grpc_route_host(name, namespace) if grpc_routed else None,
        "replicas": seen.current,
        "readyReplicas": seen.ready,
        "desiredReplicas": seen.desired,
        "replicaSummary": f"{seen.current}/{seen.desired}",
        "selector": selector_string(name),
        "canary": revisions,
        "conditions": _merge_conditions(
            [c for c in conditions if c is not None],
            previous.get("conditions") or [],
            generation,
            now or now_rfc3339(),
        ),
    }


def refused(status: Mapping[str, Any] | None) -> bool:
    """True for a status `invalid_status` wrote: the spec was refused, and only a reconcile
    of a new spec may change that (the children's events must not)."""
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ConditionType.READY.value:
            return c.get("reason") in (Reason.INVALID_SPEC.value, Reason.RECONCILE_FAILED.value)
    return False


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
    keep = [c for c in previous.get("conditions") or [] if c.get("type") != ConditionType.READY]
    return {
        "observedGeneration": generation,
        "phase": Phase.FAILED.value,
        "conditions": _merge_conditions(conds, previous.get("conditions") or [], generation, now)
        + [dict(c) for c in keep],
    }
