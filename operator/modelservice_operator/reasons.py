"""Phases, condition types and reasons of a ModelService's status: every string the
status carries of these is one of these enums (status.py, pods.py, handlers)."""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


_phases = [p.value for p in Phase]
# "Pending, Progressing, Ready, Degraded or Failed", for descriptions.
PHASES = ", ".join(_phases[:-1]) + " or " + _phases[-1]


class ConditionType(enum.StrEnum):
    READY = "Ready"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    SCALING_LIMITED = "ScalingLimited"
    REPLICAS_IGNORED = "ReplicasIgnored"
    CANARY_TRAFFIC = "CanaryTraffic"
    SCALE_TO_ZERO = "ScaleToZero"
    ROUTED = "Routed"


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
    # How a canary's traffic is split (condition CanaryTraffic, traffic.py).
    SPLIT_BY_ROUTE = "SplitByRoute"
    SPLIT_BY_REPLICAS = "SplitByReplicas"
    GATEWAY_API_MISSING = "GatewayAPIMissing"
    # Whether the Gateway's controller took up the routes (condition Routed, status.py).
    ROUTE_ACCEPTED = "RouteAccepted"
    ROUTE_PENDING = "RoutePending"
    ROUTE_NOT_ACCEPTED = "RouteNotAccepted"
    CANNOT_HONOUR = "CannotHonour"
    # Whether autoscaling.minReplicas 0 runs (condition ScaleToZero, scaling.py).
    IDLE_SCALING = "IdleScaling"
    AT_ZERO = "AtZero"
    NO_ACTIVATOR = "NoActivator"
    SCALE_TO_ZERO_WITH_CANARY = "CanaryPresent"


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


class EventReason(enum.StrEnum):
    """Reasons of the Normal events the operator posts on a ModelService (its Warning
    events carry a status `Reason`)."""

    APPLIED = "Applied"
    HPA_REMOVED = "HPARemoved"
    REPLICAS_IGNORED = "ReplicasIgnored"
    DRIFT_REPAIRED = "DriftRepaired"
    CANARY_REMOVED = "CanaryRemoved"
    ROUTE_REMOVED = "RouteRemoved"
    SCALED_TO_ZERO = "ScaledToZero"
    WOKEN = "ScaledFromZero"
    # The HPA's scale-down held while a pod loads its model, and let go (reconcile.py).
    SCALE_DOWN_HELD = "ScaleDownHeld"
    SCALE_DOWN_RESUMED = "ScaleDownResumed"
