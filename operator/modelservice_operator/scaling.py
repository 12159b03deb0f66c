"""Scale to zero, decided (pure; scaler.py does the I/O, activator.py holds the requests).

A ModelService with `autoscaling.minReplicas: 0` goes to zero replicas once its runtime
pods have answered nothing for `idleSeconds`, and comes back on the first request:

- Whether it may (`plan_scale_to_zero`): requests that arrive at zero must be held
  somewhere, and here that is the activator: behind the Gateway's routes where there is a
  Gateway (the HTTPRoute, and the GRPCRoute where gRPC is on and the activator has a gRPC
  port), and behind the model's own Service in any case (service_hold.py). So it needs
  the operator's activator; it is refused beside a canary (the weighted route has two
  backends to wake). Refused, the model stays at 1 (the HPA's floor) and condition
  ScaleToZero says why.
- Idle (`next_scale_state`): the sum of the runtime's request counters over all pods
  (`request_activity`, from /metrics) unchanged and nothing in flight, for idleSeconds.
  Only when every pod is Ready and was read: a pod still loading its model is never
  scaled away. The last count and when it last moved live in status.scaleToZero, so an
  operator restart loses nothing. Going to zero takes two checks: the first sets atZero
  and points the route at the activator, the next removes the pods unless a request came
  in meanwhile (`moved`; then it is called off), so the Gateway has taken up the new route
  before the pods go.
- Wake (`wake_requested`): the activator sets the annotation WAKE_ANNOTATION on the
  ModelService when a request arrives at zero; a request time at or after status
  scaleToZero.since wakes it.
- The routes and the Service's hold slice (`route_to_activator`): to the activator while
  at zero and until the Deployment has a Ready pod, then back to the model's pods; HTTP
  and gRPC alike.
- The activator's pure rules: which model a request is for (`parse_target`), how long it
  is held (`hold_seconds`), what a 503 says (`not_ready_message`), which headers and gRPC
  metadata it passes on (HOP_HEADERS, `passed_metadata`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelservice_operator import GROUP
from modelservice_operator.reasons import Reason
from modelservice_operator.spec import AutoscalingSpec, ModelServiceSpec
from modelservice_operator.traffic import activator_of

# Set by the activator (an RFC 3339 time) when a request arrives for a ModelService at zero.
WAKE_ANNOTATION = f"{GROUP}/wake-requested-at"
# A held request's bound when autoscaling.holdTimeoutSeconds is absent (the spec's default).
DEFAULT_HOLD_S: int = AutoscalingSpec.model_fields["hold_timeout_seconds"].default
# The header the routes set on the way to the activator: <namespace>/<name> (the GRPCRoute
# sets it too: gRPC metadata, lowercase there).
TARGET_HEADER = "X-ModelService-Target"
# On every answer the activator forwards: the seconds it held the request for a Ready pod
# (gRPC: initial metadata, lowercase).
HELD_HEADER = "X-ModelService-Held-Seconds"
# Hop-by-hop headers (RFC 9110 7.6.1) and what the activator's proxy sets itself.
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
})  # fmt: skip
# gRPC metadata keys are lowercase; the reserved ones (grpc-*, HTTP/2's) are the channel's own
# (the deadline travels as the call's timeout).
TARGET_KEY = TARGET_HEADER.lower()
HELD_KEY = HELD_HEADER.lower()
GRPC_OWN_KEYS = HOP_HEADERS | {"content-type", "user-agent", TARGET_KEY, HELD_KEY}
# status.scaleToZero's keys.
AT_ZERO, SINCE, LAST_COUNT, LAST_REQUEST_AT, WOKEN_AT = (
    "atZero", "since", "lastRequestCount", "lastRequestAt", "wokenAt",
)  # fmt: skip

# Counters that move with every request the runtime answers (inference, explanations,
# generations, prompt tokens read), and gauges of requests in flight: the runtime's own
# metric names (modelservice_runtime/serving/metrics.py, generation/metrics.py).
REQUEST_COUNTERS = frozenset({
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "modelservice_explain_request_success",
    "modelservice_explain_request_failure",
    "modelservice_generations_finished_total",
    "modelservice_prompt_tokens_total",
})  # fmt: skip
BUSY_GAUGES = frozenset({
    "nv_inference_pending_request_count",
    "modelservice_explain_pending_request_count",
    "modelservice_generation_requests_queued",
    "modelservice_generation_requests_running",
})  # fmt: skip


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(stamp: Any) -> datetime | None:
    """An RFC 3339 time (as written here, or with fractions / an offset); None otherwise."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ScaleToZeroPlan:
    """Whether scale to zero runs for this spec, and the condition ScaleToZero's words."""

    enabled: bool
    reason: Reason
    message: str


def asks_for_zero(spec: ModelServiceSpec) -> bool:
    """autoscaling.minReplicas is 0: the one test of whether scale to zero is asked for."""
    return spec.autoscaling is not None and spec.autoscaling.min_replicas == 0


def plan_scale_to_zero(spec: ModelServiceSpec) -> ScaleToZeroPlan | None:
    """None unless scale to zero is asked for; else whether it can be honoured."""
    a = spec.autoscaling
    if a is None or not asks_for_zero(spec):
        return None
    stay = "the Deployment stays at 1 replica or more"
    if spec.canary is not None:
        return ScaleToZeroPlan(
            False,
            Reason.SCALE_TO_ZERO_WITH_CANARY,
            f"autoscaling.minReplicas 0 is not honoured beside spec.canary: {stay}; remove the "
            "canary (promote or roll back) to scale to zero",
        )
    if activator_of() is None:
        return ScaleToZeroPlan(
            False,
            Reason.NO_ACTIVATOR,
            f"autoscaling.minReplicas 0 needs the operator's activator to hold requests: {stay}; "
            "install the chart with activator.enabled=true",
        )
    return ScaleToZeroPlan(
        True,
        Reason.IDLE_SCALING,
        f"goes to zero replicas after {a.idle_seconds} s without a request; a request at zero "
        f"is held up to {a.hold_timeout_seconds} s for a Ready pod",
    )


def enabled(plan: ScaleToZeroPlan | None) -> bool:
    return plan is not None and plan.enabled


def scale_state(status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """status.scaleToZero ({} when absent)."""
    return ((status or {}).get("scaleToZero")) or {}


def at_zero(status: Mapping[str, Any] | None) -> bool:
    return bool(scale_state(status).get(AT_ZERO))


def route_to_activator(enabled: bool, zero: bool, ready_replicas: int) -> bool:
    """The routes send to the activator while the model is at zero and until its
    Deployment has a Ready pod again (so the Gateway never answers 503 while it wakes)."""
    return enabled and (zero or ready_replicas <= 0)


def wake_requested(status: Mapping[str, Any] | None, annotations: Mapping[str, Any]) -> bool:
    """At zero, and the activator asked for a wake at or after the time it went there."""
    state = scale_state(status)
    if not state.get(AT_ZERO):
        return False
    asked = parse_time(annotations.get(WAKE_ANNOTATION))
    since = parse_time(state.get(SINCE))
    return asked is not None and (since is None or asked >= since)


def woken_state(now: datetime) -> dict[str, Any]:
    """status.scaleToZero after a wake: the idle clock starts again now."""
    return {AT_ZERO: False, WOKEN_AT: rfc3339(now), LAST_REQUEST_AT: rfc3339(now), LAST_COUNT: None}


@dataclass(frozen=True)
class Activity:
    """What the pods' /metrics said: the sum of their request counters and whether any
    request was in flight."""

    count: float
    busy: bool


def request_activity(texts: Iterable[str]) -> Activity:
    """Sum REQUEST_COUNTERS and look at BUSY_GAUGES over Prometheus text of every pod."""
    count, busy = 0.0, False
    for text in texts:
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name not in REQUEST_COUNTERS and name not in BUSY_GAUGES:
                continue
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            if not math.isfinite(value):
                continue
            if name in REQUEST_COUNTERS:
                count += value
            elif value > 0:
                busy = True
    return Activity(count, busy)


@dataclass(frozen=True)
class ScaleStep:
    """What the idle check decided: a status.scaleToZero patch (None: no write) and
    whether the Deployment goes to zero now."""

    patch: dict[str, Any] | None
    scale_down: bool


def next_scale_state(
    state: Mapping[str, Any], seen: Activity | None, now: datetime, idle_seconds: int
) -> ScaleStep:
    """One idle check of a model that is up. `seen` None: not every pod is Ready or one
    could not be read, so nothing is known and nothing changes (never scale away a pod
    that is still loading)."""
    if state.get(AT_ZERO) or seen is None:
        return ScaleStep(None, False)
    last_at = parse_time(state.get(LAST_REQUEST_AT))
    if last_at is None or seen.busy or seen.count != state.get(LAST_COUNT):
        return ScaleStep({LAST_COUNT: seen.count, LAST_REQUEST_AT: rfc3339(now)}, False)
    if (now - last_at).total_seconds() >= idle_seconds:
        return ScaleStep({AT_ZERO: True, SINCE: rfc3339(now)}, True)
    return ScaleStep(None, False)


def moved(state: Mapping[str, Any], seen: Activity | None) -> bool:
    """Between the decision to go to zero and the pods' removal (one check later, once the
    Gateway has taken up the route to the activator): did a request come in meanwhile?
    Then going to zero is called off. Unknown (`seen` None) is not a request."""
    return seen is not None and (seen.busy or seen.count != state.get(LAST_COUNT))


def called_off_state(seen: Activity, now: datetime) -> dict[str, Any]:
    """status.scaleToZero when going to zero is called off: up, a request just now."""
    return {AT_ZERO: False, LAST_COUNT: seen.count, LAST_REQUEST_AT: rfc3339(now)}


def wake_replicas(spec: ModelServiceSpec) -> int:
    """The replicas a wake sets (the HPA takes over from there)."""
    a = spec.autoscaling
    return max(1, a.min_replicas) if a is not None else spec.fixed_replicas


# --- what the activator decides for a held request (activator.py does the I/O) ----------


def parse_target(value: str | None) -> tuple[str, str] | None:
    """<namespace>/<name> of the header, or None when absent or malformed."""
    if not value or value.count("/") != 1:
        return None
    namespace, name = value.strip().split("/")
    return (namespace, name) if namespace and name else None


def hold_seconds(msvc: Mapping[str, Any]) -> int:
    a = (msvc.get("spec") or {}).get("autoscaling") or {}
    return int(a.get("holdTimeoutSeconds") or DEFAULT_HOLD_S)


def not_ready_message(namespace: str, name: str, held_s: float, msvc: Mapping[str, Any]) -> str:
    """The 503's message: what the ModelService's status says it waits for."""
    status = msvc.get("status") or {}
    ready = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )  # fmt: skip
    why = ", ".join(
        str(x) for x in (status.get("phase"), ready.get("reason"), ready.get("message")) if x
    )
    why = why or "no status"
    return f"ModelService {namespace}/{name} is not ready after {held_s:.0f} s: {why}"


def needs_wake(msvc: Mapping[str, Any]) -> bool:
    """At zero and no wake asked since it went there (the operator wakes on the first)."""
    status = msvc.get("status")
    if not at_zero(status):
        return False
    annotations = (msvc.get("metadata") or {}).get("annotations") or {}
    asked = parse_time(annotations.get(WAKE_ANNOTATION))
    since = parse_time(scale_state(status).get(SINCE))
    return asked is None or (since is not None and asked < since)


def passed_metadata(metadata: Any) -> tuple[tuple[str, Any], ...]:
    """gRPC metadata the activator passes on: all but the target, the held seconds, and
    what the channel sets itself (reserved grpc-* keys, HTTP/2 pseudo-headers, hop-by-hop
    headers)."""
    out = []
    for key, value in metadata or ():
        k = key.lower()
        if k in GRPC_OWN_KEYS or k.startswith((":", "grpc-")):
            continue
        out.append((k, value))
    return tuple(out)
