"""Pure functions: the children a canary and a named Gateway add beside the primary's.

- Deployment <name>-canary: the primary's pod template rendered from the canary's spec
  (spec.canary_revision: another model, maybe another image or env), serving under the
  primary's model name; label serving.modelservice.io/revision=canary, its own selector.
  Its replicas are always set (traffic.py decides them): no HPA scales it.
- Services <name>-primary and <name>-canary: one revision each, the weighted route's
  backends (also a way to reach one revision on purpose). The Service <name> keeps
  selecting every ready pod of the ModelService, both revisions.
- HTTPRoute <name> (gateway.networking.k8s.io/v1) while spec.gateway names a Gateway (or
  the operator has a default one) and the cluster serves the Gateway API: for the host
  <name>.<namespace>.<domain> (traffic.route_host), so that many ModelServices share one
  Gateway; with a canary, two weighted backends; without one, the Service <name> alone, so
  promotion or rollback keeps the route.
- GRPCRoute <name> beside it, the same split for gRPC (the Services' gRPC port), on the host
  grpc.<name>.<namespace>.<domain>, where the cluster serves GRPCRoutes and gRPC is on.
- While a model that scales to zero is at zero (or waking), both routes send to the
  activator's Service instead (its HTTP port, its gRPC port), with the header naming the
  ModelService, allowed across namespaces by a ReferenceGrant in the activator's namespace.

`owned_names` lists what these may create, so that the reconcile deletes what the spec no
longer renders (a removed canary or gateway: owner references alone would keep them).
"""

from __future__ import annotations

from typing import Any

from modelservice_operator import FIELD_MANAGER
from modelservice_operator.render import (
    LABEL_MANAGED_BY,
    PRIMARY,
    REVISION_LABEL,
    SERVICE_PORT,
    labels,
    render_deployment,
    render_service,
    selector_labels,
)
from modelservice_operator.scaling import TARGET_HEADER
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.traffic import (
    ActivatorRef,
    TrafficPlan,
    gateway_namespace,
    gateway_of,
    grpc_route_host,
    route_host,
)

CANARY = "canary"
GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
# v1beta1: the version Gateway API v1.6 stores, and the one Traefik v3.6 reads.
REFERENCE_GRANT_API_VERSION = f"{GATEWAY_GROUP}/v1beta1"


def revision_name(name: str, revision: str) -> str:
    """<name>-primary or <name>-canary (parse_spec keeps room for the suffix)."""
    return f"{name}-{revision}"


def revision_labels(name: str, revision: str) -> dict[str, str]:
    return {**selector_labels(name), REVISION_LABEL: revision}


def render_canary_deployment(
    name: str, namespace: str, spec: ModelServiceSpec, default_image: str, plan: TrafficPlan
) -> dict[str, Any]:
    """The canary's Deployment: the primary's rendering of the canary's spec, renamed, with
    the canary's labels and selector and the plan's replicas."""
    canary = spec.canary_revision
    assert canary is not None, "render_canary_deployment needs spec.canary"
    # Rendered under the primary's name: the runtime then serves the primary's model name
    # (spec.model.name, or metadata.name), which is what clients ask for.
    body = render_deployment(name, namespace, canary, default_image)
    body["metadata"]["name"] = revision_name(name, CANARY)
    body["metadata"]["labels"] = labels(name) | {REVISION_LABEL: CANARY}
    body["spec"]["selector"] = {"matchLabels": revision_labels(name, CANARY)}
    body["spec"]["template"]["metadata"]["labels"] = labels(name) | {REVISION_LABEL: CANARY}
    body["spec"]["replicas"] = plan.canary_replicas
    return body


def render_revision_service(
    name: str, namespace: str, spec: ModelServiceSpec, revision: str
) -> dict[str, Any]:
    """The Service of one revision: the ports of <name>'s, the revision's pods only."""
    body = render_service(name, namespace, spec)
    body["metadata"]["name"] = revision_name(name, revision)
    body["metadata"]["labels"] = labels(name) | {REVISION_LABEL: revision}
    body["spec"]["selector"] = revision_labels(name, revision)
    return body


def render_route(
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    weights: tuple[int, int],
    activator: ActivatorRef | None = None,
) -> dict[str, Any]:
    """HTTPRoute <name> on the Gateway (traffic.gateway_of) for the ModelService's host: the
    primary's and the canary's Services weighted (primary, canary), or the Service <name>
    alone without a canary. With `activator` (scaled to zero, or waking: scaling.py), the
    activator's Service in its own namespace instead, with a header naming the ModelService
    (the ReferenceGrant `render_reference_grant` makes allows the cross-namespace ref)."""
    gateway = gateway_of(spec)
    assert gateway is not None, "render_route needs a Gateway"
    rule: dict[str, Any] = {}
    if activator is not None:
        backends: list[dict[str, Any]] = [{
            "group": "", "kind": "Service", "name": activator.name,
            "namespace": activator.namespace, "port": activator.port, "weight": 1,
        }]  # fmt: skip
        target = {"name": TARGET_HEADER, "value": f"{namespace}/{name}"}
        rule["filters"] = [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [target]}}
        ]
    elif spec.canary is None:
        backends = [{"name": name, "port": SERVICE_PORT, "weight": 1}]
    else:
        backends = [
            {"name": revision_name(name, PRIMARY), "port": SERVICE_PORT, "weight": weights[0]},
            {"name": revision_name(name, CANARY), "port": SERVICE_PORT, "weight": weights[1]},
        ]
    parent = {
        "group": GATEWAY_GROUP,
        "kind": "Gateway",
        "name": gateway.name,
        "namespace": gateway_namespace(spec, namespace),
    }
    return {
        "apiVersion": ROUTE_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "parentRefs": [parent],
            "hostnames": [route_host(name, namespace)],
            "rules": [{**rule, "backendRefs": backends}],
        },
    }


def reference_grant_name(from_namespace: str) -> str:
    return f"modelservice-activator-from-{from_namespace}"[:253]


def render_reference_grant(activator: ActivatorRef, from_namespace: str) -> dict[str, Any]:
    """ReferenceGrant in the activator's namespace letting HTTPRoutes and GRPCRoutes of
    `from_namespace` send to the activator's Service (one per namespace with a ModelService
    that scales to zero; it has no owner there, being in another namespace, and is left in
    place)."""
    return {
        "apiVersion": REFERENCE_GRANT_API_VERSION,
        "kind": "ReferenceGrant",
        "metadata": {
            "name": reference_grant_name(from_namespace),
            "namespace": activator.namespace,
            "labels": {LABEL_MANAGED_BY: FIELD_MANAGER},
        },
        "spec": {
            "from": [
                {"group": GATEWAY_GROUP, "kind": kind, "namespace": from_namespace}
                for kind in ("HTTPRoute", "GRPCRoute")
            ],
            "to": [{"group": "", "kind": "Service", "name": activator.name}],
        },
    }


def render_grpc_route(
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    weights: tuple[int, int],
    activator: ActivatorRef | None = None,
) -> dict[str, Any] | None:
    """GRPCRoute <name>: the HTTPRoute's split for gRPC clients, to the Services' gRPC port
    (h2c), on the host grpc.<name>.<namespace>.<domain>; None with spec.runtime.grpc off.
    With `activator` (as render_route), its Service's gRPC port and the same header (gRPC
    metadata), where the activator has a gRPC port; without one, the model's Service."""
    grpc = spec.runtime.grpc
    if not grpc.enabled:
        return None
    held = activator if activator is not None and activator.grpc_port is not None else None
    route = render_route(name, namespace, spec, weights, held)
    route["kind"] = "GRPCRoute"
    route["spec"]["hostnames"] = [grpc_route_host(name, namespace)]
    for backend in route["spec"]["rules"][0]["backendRefs"]:
        backend["port"] = held.grpc_port if held is not None else grpc.port
    return route


def render_revisions(
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    default_image: str,
    plan: TrafficPlan | None,
) -> list[dict[str, Any]]:
    """The canary's Deployment and both revision Services (with a canary and its plan)."""
    if spec.canary is None or plan is None:
        return []
    return [
        render_canary_deployment(name, namespace, spec, default_image, plan),
        render_revision_service(name, namespace, spec, PRIMARY),
        render_revision_service(name, namespace, spec, CANARY),
    ]


def render_revision_child(
    kind: str,
    child_name: str,
    name: str,
    namespace: str,
    spec: ModelServiceSpec,
    default_image: str,
    plan: TrafficPlan | None,
) -> dict[str, Any] | None:
    """The one revision child of this kind and name the spec renders, or None (drift.py)."""
    for child in render_revisions(name, namespace, spec, default_image, plan):
        if child["kind"] == kind and child["metadata"]["name"] == child_name:
            return child
    return None


def clash_candidates(name: str) -> list[str]:
    """Names of ModelServices whose children could share a name with this one's: its
    revision children's names, and the base name when this one ends in -primary/-canary."""
    out = [revision_name(name, r) for r in (PRIMARY, CANARY)]
    for revision in (PRIMARY, CANARY):
        suffix = f"-{revision}"
        if name.endswith(suffix) and len(name) > len(suffix):
            out.append(name[: -len(suffix)])
    return out


def name_clash(
    name: str, created: str, has_canary: bool, neighbours: dict[str, tuple[bool, str]]
) -> str | None:
    """Why this ModelService must not apply its children, or None. `neighbours` maps the
    `clash_candidates` that exist in the namespace to (has a canary, creationTimestamp).
    Server-side apply by one field manager would silently take over the other's
    Deployment or Service of the same name; the one created first keeps its children."""
    for revision in (PRIMARY, CANARY):
        child = revision_name(name, revision)
        other = neighbours.get(child)
        if has_canary and other is not None and other[1] <= created:
            return (
                f"spec.canary: its children are named {name}-primary and {name}-canary, and "
                f"ModelService {child} (created first) owns children named {child}: rename "
                "one of the two ModelServices"
            )
        suffix = f"-{revision}"
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        other = neighbours.get(base) if base else None
        if other is not None and other[0] and other[1] <= created:
            return (
                f"metadata.name: ModelService {base} (created first) has a canary whose "
                f"children are named {name}: rename this ModelService"
            )
    return None


def owned_names(name: str) -> list[tuple[str, str]]:
    """(kind, name) of every child a canary or a Gateway may add: what the reconcile
    deletes when the spec no longer renders it."""
    return [
        ("Deployment", revision_name(name, CANARY)),
        ("Service", revision_name(name, CANARY)),
        ("Service", revision_name(name, PRIMARY)),
        ("HTTPRoute", name),
        ("GRPCRoute", name),
    ]
