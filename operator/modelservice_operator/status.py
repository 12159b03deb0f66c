"""ModelService status: its schema (pydantic, generated into the CRD) and how it is derived.

`compute_status` is pure: from the validated spec, the live Deployment and HPA (as dicts,
or None), what `diagnose_pods` found in the runtime pods and the previous status it
computes the phase, replica counts, URL and the conditions Ready / Available / Progressing
/ ScalingLimited / ReplicasIgnored. Condition `lastTransitionTime` only moves when a
condition's status flips, as in core types.

The Deployment only counts pods; why they are not ready is in the pods' container
statuses, so `diagnose_pods` reads those (the init container's or runtime's last log
lines arrive there through terminationMessagePolicy FallbackToLogsOnError, render.py).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelservice_operator.render import (
    FETCH_CONTAINER,
    RUNTIME_CONTAINER,
    SPEC_HASH_ANNOTATION,
    selector_string,
    service_url,
    spec_hash,
)
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
    # From the pods (diagnose_pods): failures first, then why a pod is still on its way.
    MODEL_FETCH_FAILED = "ModelFetchFailed"
    RUNTIME_FAILED = "RuntimeFailed"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CONFIG_FAILED = "ContainerConfigFailed"
    UNSCHEDULABLE = "Unschedulable"
    FETCHING_MODEL = "FetchingModel"
    LOADING_MODEL = "LoadingModel"


# Pod problems that need a person (the pod will not become ready by waiting): the
# ModelService goes Failed (no replica ready) or Degraded, and a Warning event says why.
FAILURE_REASONS = frozenset({
    Reason.MODEL_FETCH_FAILED,
    Reason.RUNTIME_FAILED,
    Reason.IMAGE_PULL_FAILED,
    Reason.CONTAINER_CONFIG_FAILED,
})  # fmt: skip
# Also worth a Warning, though a new node (a cluster autoscaler) may still resolve it.
WARNING_REASONS = FAILURE_REASONS | {Reason.UNSCHEDULABLE}


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


# --- why the pods are not ready ---------------------------------------------------------

# Waiting reasons with which kubelet gives up on starting a container until something
# changes (the image, a missing Secret or ConfigMap, the command).
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull"})  # fmt: skip
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                            "RunContainerError"})  # fmt: skip
# A termination message in a status condition: the last lines (the error is printed
# last), at most this much of them. kubelet itself keeps 80 lines / 2 KiB.
MESSAGE_MAX_LINES = 5
MESSAGE_MAX_CHARS = 1024
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
)


def tail(text: str, max_lines: int = MESSAGE_MAX_LINES, max_chars: int = MESSAGE_MAX_CHARS) -> str:
    """The last non-empty lines of a container's output, cut to `max_chars` from the end
    (a log's last lines say why it failed; the first ones are progress)."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    out = "\n".join(lines[-max_lines:])
    if len(out) > max_chars:
        out = "..." + out[-(max_chars - 3) :]
    return out


@dataclass(frozen=True)
class PodDiagnosis:
    """Why one runtime pod is not ready: a reason for the Ready condition and the detail."""

    reason: Reason
    pod: str
    detail: str  # without the pod's name: the same failure in a replacement pod reads alike
    # What stays the same while the failure does, when `detail` does not (kubelet flips an
    # image pull between ErrImagePull and ImagePullBackOff, each with its own message).
    identity: str | None = None

    @property
    def failed(self) -> bool:
        return self.reason in FAILURE_REASONS

    @property
    def message(self) -> str:
        return f"pod {self.pod}: {self.detail}"

    @property
    def signature(self) -> tuple[str, str]:
        """What makes two reports the same failure: the reason and the detail without
        timestamps (the runtime's log lines carry them), so that a pod failing again
        the same way, or its replacement, is not news."""
        return self.reason.value, _TIMESTAMP.sub("<time>", self.identity or self.detail)


# Most urgent first: a failure needs a person; an unscheduled pod may wait for a node;
# the pod furthest from ready tells best how long the wait will be.
_RANK = {
    **dict.fromkeys(FAILURE_REASONS, 0),
    Reason.UNSCHEDULABLE: 1,
    Reason.FETCHING_MODEL: 2,
    Reason.LOADING_MODEL: 3,
}


def _how_it_ended(term: Mapping[str, Any]) -> str:
    code, why = term.get("exitCode"), term.get("reason")
    if why == "OOMKilled":
        return f"was killed for running out of memory (OOMKilled, exit code {code})"
    return f"exited with code {code}" + (f" ({why})" if why and why != "Error" else "")


def _terminated_failure(name: str, cs: Mapping[str, Any]) -> str | None:
    """The detail of a container that failed, now or in its last run (kubelet is
    restarting it, and it will most likely fail the same way again), or None."""
    state, last = cs.get("state") or {}, cs.get("lastState") or {}
    term, previous = state.get("terminated"), ""
    if term is not None:
        if term.get("exitCode", 0) == 0:
            return None  # finished (an init container), whatever failed before that
    elif cs.get("ready"):
        return None  # restarted and recovered
    else:
        term, previous = last.get("terminated"), " --previous"
        if term is None or term.get("exitCode", 0) == 0:
            return None
    output = tail(str(term.get("message") or ""))
    if not output:
        output = f"no output (kubectl logs -c {name}{previous})"
    return f"container {name} {_how_it_ended(term)}: {output}"


def _waiting(cs: Mapping[str, Any]) -> tuple[str, str]:
    waiting = (cs.get("state") or {}).get("waiting") or {}
    return str(waiting.get("reason") or ""), str(waiting.get("message") or "")


def diagnose_pod(pod: Mapping[str, Any]) -> PodDiagnosis | None:
    """What keeps one pod from being ready, when its status says so clearly; None for a
    pod that is ready, going away, or between steps (being created, initializing)."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    name = str(meta.get("name") or "")
    if meta.get("deletionTimestamp") or st.get("phase") in ("Succeeded", "Failed"):
        return None  # the ReplicaSet replaces it; its end is no news
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") == "Unschedulable":
                detail = str(cond.get("message") or "no node fits the pod")
                return PodDiagnosis(Reason.UNSCHEDULABLE, name, f"unschedulable: {detail}")
            return None
    inits = list(st.get("initContainerStatuses") or [])
    mains = list(st.get("containerStatuses") or [])
    for cs in inits + mains:
        reason, message = _waiting(cs)
        what = f"container {cs.get('name')}: {reason}" + (f": {message}" if message else "")
        if reason in IMAGE_PULL_REASONS:
            image = f"container {cs.get('name')} image {cs.get('image')}"
            return PodDiagnosis(Reason.IMAGE_PULL_FAILED, name, what, identity=image)
        if reason in CONFIG_REASONS:
            return PodDiagnosis(Reason.CONTAINER_CONFIG_FAILED, name, what)
    for cs in inits:
        if cs.get("name") != FETCH_CONTAINER:
            continue  # another's init container (a mesh's): not ours to explain
        failure = _terminated_failure(FETCH_CONTAINER, cs)
        if failure is not None:
            return PodDiagnosis(Reason.MODEL_FETCH_FAILED, name, failure)
        if "running" in (cs.get("state") or {}):
            return PodDiagnosis(
                Reason.FETCHING_MODEL,
                name,
                f"fetching the model (init container {FETCH_CONTAINER})",
            )
    for cs in mains:
        if cs.get("name") != RUNTIME_CONTAINER:
            continue
        failure = _terminated_failure(RUNTIME_CONTAINER, cs)
        if failure is not None:
            return PodDiagnosis(Reason.RUNTIME_FAILED, name, failure)
        running = "running" in (cs.get("state") or {})
        if running and not cs.get("ready") and not cs.get("started"):
            return PodDiagnosis(
                Reason.LOADING_MODEL,
                name,
                "loading the model (the runtime has not passed its startup probe yet)",
            )
    return None


def diagnose_pods(
    pods: Iterable[Mapping[str, Any]], spec: ModelServiceSpec | None = None
) -> PodDiagnosis | None:
    """The most urgent thing keeping the ModelService's pods from being ready, or None.

    With `spec`, pods of an older pod template (another spec hash) are left out: during a
    rollout the Deployment is replacing them, and what stops the new ones is the news.
    Ties go to the first pod by name, so the report does not hop between replicas.
    """
    want = spec_hash(spec) if spec is not None else None
    found: list[PodDiagnosis] = []
    for pod in pods:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        have = annotations.get(SPEC_HASH_ANNOTATION)
        if want is not None and have is not None and have != want:
            continue
        diagnosis = diagnose_pod(pod)
        if diagnosis is not None:
            found.append(diagnosis)
    return min(found, key=lambda d: (_RANK[d.reason], d.pod), default=None)


# --- the last progress line of a pod still on its way ----------------------------------

# How many log lines are read for it (the last non-empty one is shown), and its length.
PROGRESS_LOG_LINES = 3
PROGRESS_MAX_CHARS = 240


def progress_source(diagnosis: PodDiagnosis | None) -> tuple[str, str] | None:
    """(pod, container) whose log tells how far a starting pod is: the model-fetch init
    container while it fetches (its progress lines), the runtime while it loads; None
    when the diagnosis is no such wait."""
    if diagnosis is None:
        return None
    if diagnosis.reason is Reason.FETCHING_MODEL:
        return diagnosis.pod, FETCH_CONTAINER
    if diagnosis.reason is Reason.LOADING_MODEL:
        return diagnosis.pod, RUNTIME_CONTAINER
    return None


def last_progress_line(log: str) -> str | None:
    """The last thing a container printed, as one line: the last non-empty line (of a
    bar redrawn with carriage returns, its last drawing: splitlines splits at \\r too)."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line:
            if len(line) > PROGRESS_MAX_CHARS:
                line = line[: PROGRESS_MAX_CHARS - 3] + "..."
            return line
    return None


def with_progress(diagnosis: PodDiagnosis | None, line: str | None) -> PodDiagnosis | None:
    """The diagnosis with the pod's last progress line in its detail. Its identity stays
    the detail without the line, so a new line is never a new failure to report."""
    if diagnosis is None or line is None or progress_source(diagnosis) is None:
        return diagnosis
    return PodDiagnosis(
        diagnosis.reason,
        diagnosis.pod,
        f"{diagnosis.detail}; last output: {line}",
        identity=diagnosis.identity or diagnosis.detail,
    )


def pod_essentials(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod that `diagnose_pod` reads, with output already cut to size: what
    the operator keeps in memory per pod (its watch index) instead of whole pods."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}

    def container(cs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: cs[k] for k in ("name", "image", "ready", "started") if k in cs}
        for key in ("state", "lastState"):
            state = {}
            for kind, detail in (cs.get(key) or {}).items():
                detail = dict(detail or {})
                if "message" in detail:
                    detail["message"] = tail(str(detail["message"]))
                detail.pop("containerID", None)
                state[kind] = detail
            out[key] = state
        return out

    annotations = meta.get("annotations") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "annotations": {k: v for k, v in annotations.items() if k == SPEC_HASH_ANNOTATION},
        },
        "status": {
            "phase": st.get("phase"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message") if k in c}
                for c in st.get("conditions") or []
                if c.get("type") == "PodScheduled"
            ],
            "initContainerStatuses": [container(c) for c in st.get("initContainerStatuses") or []],
            "containerStatuses": [container(c) for c in st.get("containerStatuses") or []],
        },
    }


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
) -> dict[str, Any]:
    """The status dict (camelCase, as in the CRD) for a valid spec and its children.

    `diagnosis` (from `diagnose_pods`) turns "pods not ready" into why: a pod failure is
    phase Failed while no replica is ready, else Degraded; a pod still fetching or loading
    its model is Progressing (FetchingModel / LoadingModel); one no node can take is
    Pending (Unschedulable).
    """
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

    serving = complete and ready >= desired
    if deployment is None:
        phase, reason, msg = Phase.PENDING, Reason.DEPLOYMENT_MISSING, "waiting for the Deployment"
    elif diagnosis is not None and diagnosis.failed and desired > 0 and not serving:
        # Before ProgressDeadlineExceeded: that only says how long, the pod says why. A
        # failure kubelet keeps retrying (a fetch that fails each time) is still a failure.
        phase = Phase.DEGRADED if ready else Phase.FAILED
        reason, msg = diagnosis.reason, f"{counts}: {diagnosis.message}"
    elif stuck:
        phase = Phase.DEGRADED if ready else Phase.FAILED
        reason, msg = Reason.PROGRESS_DEADLINE_EXCEEDED, f"{counts}: {progressing.get('message')}"
    elif desired == 0:
        phase, reason, msg = Phase.PENDING, Reason.SCALED_TO_ZERO, "scaled to zero replicas"
    elif serving:
        phase, reason, msg = Phase.READY, Reason.ALL_REPLICAS_READY, counts
    elif ready == 0 and diagnosis is not None:
        phase = Phase.PENDING if diagnosis.reason is Reason.UNSCHEDULABLE else Phase.PROGRESSING
        reason, msg = diagnosis.reason, f"{counts}: {diagnosis.message}"
    elif ready == 0:
        phase, reason = Phase.PENDING, Reason.PODS_NOT_READY
        msg = f"{counts}: waiting for pods to be scheduled, fetch the model and pass readiness"
    elif not complete:
        phase, reason, msg = Phase.PROGRESSING, Reason.ROLLING_OUT, f"{counts}: rolling out"
        if diagnosis is not None:
            msg += f"; {diagnosis.message}"
    else:
        phase, reason, msg = Phase.DEGRADED, Reason.REPLICAS_UNAVAILABLE, counts
        if diagnosis is not None:
            msg += f": {diagnosis.message}"
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
    keep = [c for c in previous.get("conditions") or [] if c.get("type") != "Ready"]
    return {
        "observedGeneration": generation,
        "phase": Phase.FAILED.value,
        "conditions": _merge_conditions(conds, previous.get("conditions") or [], generation, now)
        + [dict(c) for c in keep],
    }
