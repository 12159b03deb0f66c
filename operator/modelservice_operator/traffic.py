"""How a canary's traffic is split, decided from the spec alone (pure; revisions.py renders
it, status.py reports it).

Two ways, and the operator says which one it uses (condition CanaryTraffic):

- Through a Gateway (spec.gateway, else the operator's default Gateway, with the Gateway
  API installed): the HTTPRoute <name>
  weights the Services <name>-primary and <name>-canary 100-p : p. The primary keeps its
  replicas (or its HPA); the canary runs its share of the primary's base count (spec.replicas,
  or autoscaling.minReplicas), rounded up, at least one pod, so that it is warm before
  traffic moves. The canary's weight follows its Ready pods (`route_weights`): traffic
  moves only to pods that can answer.
- Without one: both Deployments sit behind the one Service <name>, which spreads requests
  over ready pods evenly, so the split is the replica count. spec.replicas is the total:
  the canary gets replicas x p / 100 and the primary the rest, but only when that is a
  whole number. Anything else would be a split that lies, so the canary then runs no pods
  and the condition says what would work. With autoscaling the HPA moves the primary's
  count under any fixed canary count, so only 0 can be honoured.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from modelservice_operator.reasons import Reason
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.spec_canary import GatewayRef

# Route hosts are <name>.<namespace>.<domain>: each part a DNS label, so the host is a valid
# name for any ModelService (KServe's <name>-<namespace> can exceed a label's 63 characters).
DEFAULT_ROUTE_DOMAIN = "models.internal"


@dataclass(frozen=True)
class ActivatorRef:
    """The activator's Service (activator.py), which holds requests for a ModelService at
    zero: the HTTPRoute's backend meanwhile (`port`), and the GRPCRoute's (`grpc_port`, h2c;
    None: gRPC is not held, the GRPCRoute stays at the model's Service)."""

    namespace: str
    name: str
    port: int = 80
    grpc_port: int | None = None


@dataclass(frozen=True)
class RouteDefaults:
    """What the operator was configured with (OperatorSettings, at startup): the Gateway a
    ModelService's HTTPRoute attaches to when spec.gateway is absent, the domain of the
    host names the routes answer to, and the activator's Service (None: no scale to zero)."""

    gateway: GatewayRef | None = None
    domain: str = DEFAULT_ROUTE_DOMAIN
    activator: ActivatorRef | None = None


_defaults = RouteDefaults()


def set_route_defaults(defaults: RouteDefaults) -> None:
    """Called once, when the operator starts (handlers.configure)."""
    global _defaults
    _defaults = defaults


def gateway_of(spec: ModelServiceSpec) -> GatewayRef | None:
    """The Gateway the HTTPRoute attaches to: spec.gateway, else the operator's default;
    None: no route."""
    return spec.gateway or _defaults.gateway


def activator_of() -> ActivatorRef | None:
    """The activator's Service the operator was configured with, or None."""
    return _defaults.activator


def route_host(name: str, namespace: str) -> str:
    """The host name the ModelService's HTTPRoute answers to on its Gateway."""
    return f"{name}.{namespace}.{_defaults.domain}"


def grpc_route_host(name: str, namespace: str) -> str:
    """The GRPCRoute's host: its own, since a GRPCRoute and an HTTPRoute must not share a
    host name on one listener (the Gateway API calls that a conflict)."""
    return f"grpc.{route_host(name, namespace)}"


def gateway_where(spec: ModelServiceSpec, namespace: str) -> str:
    """namespace/name of the Gateway (gateway_of must not be None)."""
    gateway = gateway_of(spec)
    assert gateway is not None
    return f"{gateway_namespace(spec, namespace)}/{gateway.name}"


class SplitMode(enum.StrEnum):
    ROUTE = "HTTPRoute"
    REPLICAS = "ReplicaCount"


@dataclass(frozen=True)
class TrafficPlan:
    """The split the spec asks for and how the operator runs it."""

    percent: int  # spec.canary.trafficPercent
    mode: SplitMode
    canary_replicas: int
    # The primary Deployment's replicas when the split sets them; None: as without a canary
    # (spec.replicas, or left to the HPA).
    primary_replicas: int | None
    honoured: bool
    reason: Reason
    message: str


def gateway_namespace(spec: ModelServiceSpec, namespace: str) -> str | None:
    """The Gateway's namespace (the ModelService's unless it says another); None without
    a Gateway."""
    gateway = gateway_of(spec)
    if gateway is None:
        return None
    return gateway.namespace or namespace


def routes_through_gateway(spec: ModelServiceSpec, gateway_api: bool) -> bool:
    """A Gateway is named (or the operator has a default) and the cluster serves the Gateway
    API: the operator renders the HTTPRoute (with or without a canary)."""
    return gateway_of(spec) is not None and gateway_api


def percents_that_work(total: int) -> list[int]:
    """Every trafficPercent a replica count can honour exactly."""
    return [p for p in range(101) if total * p % 100 == 0]


def _base_replicas(spec: ModelServiceSpec) -> int:
    a = spec.autoscaling
    return spec.fixed_replicas if a is None else max(1, a.min_replicas)


def _route_plan(spec: ModelServiceSpec, namespace: str, name: str, percent: int) -> TrafficPlan:
    base = _base_replicas(spec)
    canary = 0 if base == 0 else max(1, math.ceil(base * percent / 100))
    where = gateway_where(spec, namespace)
    return TrafficPlan(
        percent=percent,
        mode=SplitMode.ROUTE,
        canary_replicas=canary,
        primary_replicas=None,
        honoured=True,
        reason=Reason.SPLIT_BY_ROUTE,
        message=f"HTTPRoute {name} on Gateway {where} weights {name}-primary {100 - percent}, "
        f"{name}-canary {percent}; the canary's weight follows its Ready pods "
        f"({canary} replicas)",
    )


def _cannot(percent: int, why: str, fallback: str) -> TrafficPlan:
    return TrafficPlan(
        percent=percent,
        mode=SplitMode.REPLICAS,
        canary_replicas=0,
        primary_replicas=None,
        honoured=False,
        reason=Reason.CANNOT_HONOUR,
        message=f"{fallback}spec.canary.trafficPercent={percent} cannot be honoured by replica "
        f"count {why}; the canary runs no pods until it can",
    )


def plan_traffic(
    spec: ModelServiceSpec, namespace: str, name: str, *, gateway_api: bool
) -> TrafficPlan | None:
    """The split for a spec with a canary (None without one). `gateway_api`: the cluster
    serves gateway.networking.k8s.io/v1 HTTPRoutes (asked only when a Gateway is named)."""
    if spec.canary is None:
        return None
    percent = spec.canary.traffic_percent
    if routes_through_gateway(spec, gateway_api):
        return _route_plan(spec, namespace, name, percent)
    fallback = ""
    reason = Reason.SPLIT_BY_REPLICAS
    if gateway_of(spec) is not None:
        named = "spec.gateway names" if spec.gateway is not None else "the operator's default is"
        fallback = (
            f"{named} Gateway {gateway_where(spec, namespace)}, but the cluster does not serve "
            "the Gateway API (gateway.networking.k8s.io/v1 HTTPRoute): split by replica count "
            "instead. "
        )
        reason = Reason.GATEWAY_API_MISSING
    if spec.autoscaling is not None:
        if percent != 0:
            return _cannot(
                percent,
                "while spec.autoscaling is set (the HorizontalPodAutoscaler moves the "
                "primary's count): name a Gateway in spec.gateway, use trafficPercent 0, or "
                "fixed spec.replicas instead of autoscaling",
                fallback,
            )
        canary, primary = 0, None
    else:
        total = spec.fixed_replicas
        if total * percent % 100:
            works = ", ".join(str(p) for p in percents_that_work(total))
            multiple = 100 // math.gcd(percent, 100)
            return _cannot(
                percent,
                f"with spec.replicas={total} (the canary would need "
                f"{total * percent / 100:g} replicas): with {total} replicas use "
                f"trafficPercent {works}, or set spec.replicas to a multiple of {multiple}, or "
                "name a Gateway in spec.gateway",
                fallback,
            )
        canary = total * percent // 100
        primary = total - canary
    if primary is None:
        counts = "the canary runs no pods (trafficPercent 0)"
    else:
        counts = f"primary {primary} and canary {canary} replicas"
    return TrafficPlan(
        percent=percent,
        mode=SplitMode.REPLICAS,
        canary_replicas=canary,
        primary_replicas=primary,
        honoured=True,
        reason=reason,
        message=f"{fallback}split by replica count behind the Service {name}: {counts} "
        f"({percent}% to the canary once all are ready)",
    )


def route_weights(
    plan: TrafficPlan | None, canary_ready: int, canary_desired: int
) -> tuple[int, int]:
    """(primary, canary) backend weights of the HTTPRoute. The canary's share grows with
    its Ready pods (all of trafficPercent once every desired one is Ready, none before the
    first is), so the route never sends requests to a revision that cannot answer them."""
    if plan is None or plan.percent == 0 or canary_desired <= 0:
        return 100, 0
    canary = plan.percent * min(canary_ready, canary_desired) // canary_desired
    return 100 - canary, canary


def replica_split(primary_ready: int, canary_ready: int) -> tuple[int, int] | None:
    """(primary, canary) percent of requests behind the one Service: the share of ready
    pods (None while no pod is ready)."""
    total = primary_ready + canary_ready
    if total <= 0:
        return None
    canary = round(100 * canary_ready / total)
    return 100 - canary, canary
