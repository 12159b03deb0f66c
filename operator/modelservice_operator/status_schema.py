"""The ModelService's status schema: pydantic models that crd.py generates into the CRD's
`status` (status.py computes the values)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from modelservice_operator.reasons import PHASES, ConditionStatus, ConditionType, Phase
from modelservice_operator.traffic import SplitMode


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


class RevisionStatus(_StatusModel):
    """One revision of a ModelService with a canary: its Deployment, model and readiness."""

    deployment: str = Field(description="Name of the revision's Deployment.")
    model_uri: str = Field(description="The model this revision serves.")
    model_sha256: str | None = Field(default=None, description="Its expected SHA-256.")
    replicas: int = Field(default=0, description="Pods of this revision that exist now.")
    ready_replicas: int = Field(default=0, description="Pods of this revision that are ready.")
    desired_replicas: int = Field(default=0, description="Pods of this revision wanted now.")
    message: str | None = Field(
        default=None, description="Why its pods are not ready (from their statuses), if known."
    )


class CanaryStatus(_StatusModel):
    """Both revisions and the split of requests between them (spec.canary)."""

    traffic_percent: int = Field(description="spec.canary.trafficPercent, as asked.")
    mode: SplitMode = Field(
        description="How requests are split: HTTPRoute (weighted backends on the named "
        "Gateway) or ReplicaCount (both revisions behind the one Service)."
    )
    primary_weight: int | None = Field(
        default=None,
        description="Percent of requests the primary gets now: the HTTPRoute's weight, or its "
        "share of ready pods behind the one Service (absent while no pod is ready).",
    )
    canary_weight: int | None = Field(
        default=None, description="Percent of requests the canary gets now (as primaryWeight)."
    )
    primary: RevisionStatus = Field(description="The primary revision (spec.model).")
    canary: RevisionStatus = Field(description="The canary revision (spec.canary.model).")


class ScaleToZeroStatus(_StatusModel):
    """Scale to zero's state (autoscaling.minReplicas 0), kept here so that an operator
    restart loses nothing."""

    at_zero: bool | None = Field(
        default=None, description="The Deployment was scaled to zero for being idle."
    )
    since: str | None = Field(default=None, description="When it last went to zero.")
    woken_at: str | None = Field(
        default=None, description="When a held request last woke it from zero."
    )
    last_request_count: float | None = Field(
        default=None,
        description="The runtime pods' request counters, summed, when last read.",
    )
    last_request_at: str | None = Field(
        default=None, description="When that count last moved (or a request was in flight)."
    )


class ModelServiceStatus(_StatusModel):
    """Observed state of a ModelService, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation the operator last reconciled."
    )
    phase: Phase | None = Field(default=None, description=f"{PHASES}.")
    url: str | None = Field(default=None, description="In-cluster URL of the runtime Service.")
    gateway: str | None = Field(
        default=None,
        description="namespace/name of the Gateway the HTTPRoute <name> attaches to (spec.gateway "
        "or the operator's default); absent without a route.",
    )
    gateway_host: str | None = Field(
        default=None,
        description="Host name the HTTPRoute answers to: send requests to the Gateway's address "
        "with this Host header.",
    )
    gateway_grpc_host: str | None = Field(
        default=None,
        description="Host name the GRPCRoute answers to (gRPC clients' authority); absent "
        "without one.",
    )
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
    canary: CanaryStatus | None = Field(
        default=None,
        description="With spec.canary: both revisions, their readiness and the split in effect "
        "(condition CanaryTraffic says how the split is made, or why it cannot be).",
    )
    scale_to_zero: ScaleToZeroStatus | None = Field(
        default=None,
        description="With autoscaling.minReplicas 0: whether the model is at zero, and when "
        "it last answered a request.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Available, Progressing, ScalingLimited, CanaryTraffic, "
        "ScaleToZero, ...",
    )
