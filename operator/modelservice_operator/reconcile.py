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

from modelservice_operator import KIND
from modelservice_operator.indexes import (
    Children,
    note_route,
    owner_body,
    owner_spec,
    routes_of,
)
from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.memory import OwnerMemory, owner_key
from modelservice_operator.pods import PodDiagnosis, diagnose_pods, first_loading
from modelservice_operator.progress import with_known_progress
from modelservice_operator.reasons import EventReason, Reason
from modelservice_operator.render import (
    hold_scale_down,
    render_child,
    render_children,
    scale_down_held,
)
from modelservice_operator.revisions import (
    CANARY,
    owned_names,
    reference_grant_name,
    render_grpc_route,
    render_reference_grant,
    render_revision_child,
    render_revisions,
    render_route,
    revision_name,
)
from modelservice_operator.scaling import (
    ScaleToZeroPlan,
    at_zero,
    enabled,
    plan_scale_to_zero,
    route_to_activator,
)
from modelservice_operator.service_hold import (
    HOLD_MANAGER,
    MANAGED_BY_LABEL,
    ActivatorPods,
    hold_slice_name,
    render_hold_slice,
    slices_of_service,
)
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.status import compute_status
from modelservice_operator.traffic import (
    ActivatorRef,
    TrafficPlan,
    activator_of,
    gateway_of,
    plan_traffic,
    route_weights,
    routes_through_gateway,
)
from modelservice_operator.writes import (
    ReconcileError,
    apply_child,
    delete_if,
    normal_event,
    owned_by,
)

HPA = "HorizontalPodAutoscaler"


def gateway_api_served(spec: ModelServiceSpec) -> bool:
    """Whether the cluster serves HTTPRoutes, asked (API discovery, cached in kube.py) only
    when there is a Gateway (spec.gateway or the operator's default). Not served: the split
    falls back to replica count and condition CanaryTraffic says so; the operator never
    fails for it."""
    if gateway_of(spec) is None:
        return False
    try:
        return client().serves("HTTPRoute")
    except KubeApiError as e:
        raise ReconcileError(f"API discovery of gateway.networking.k8s.io/v1: {e}") from e


def traffic_plan(owner: Mapping[str, Any], spec: ModelServiceSpec) -> TrafficPlan | None:
    """The canary's split for this owner (None without spec.canary)."""
    meta = owner["metadata"]
    return plan_traffic(spec, meta["namespace"], meta["name"], gateway_api=gateway_api_served(spec))


def _ready(deployment: Mapping[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def routes_served(spec: ModelServiceSpec) -> tuple[bool, bool]:
    """Whether the ModelService gets (an HTTPRoute, a GRPCRoute): a Gateway and the Gateway
    API served; for the GRPCRoute also gRPC on and GRPCRoutes served (Gateway API v1.1+)."""
    http = routes_through_gateway(spec, gateway_api_served(spec))
    if not http or not spec.runtime.grpc.enabled:
        return http, False
    try:
        return True, client().serves("GRPCRoute")
    except KubeApiError as e:
        raise ReconcileError(f"API discovery of gateway.networking.k8s.io/v1: {e}") from e


def zero_plan(spec: ModelServiceSpec) -> ScaleToZeroPlan | None:
    """Scale to zero's plan (scaling.py): None unless autoscaling.minReplicas is 0."""
    return plan_scale_to_zero(spec)


def to_activator(
    owner: Mapping[str, Any], spec: ModelServiceSpec, primary: Mapping[str, Any] | None
) -> ActivatorRef | None:
    """The activator the routes send to now (scaling.route_to_activator), or None."""
    plan = zero_plan(spec)
    if not route_to_activator(enabled(plan), at_zero(owner.get("status")), _ready(primary)):
        return None
    return activator_of()


def ensure_reference_grant(activator: ActivatorRef, namespace: str) -> None:
    """The ReferenceGrant that lets `namespace`'s HTTPRoutes and GRPCRoutes reach the
    activator, applied with every route to the activator (those are applied only when the
    route switches, or on a reconcile), so a grant deleted by hand comes back."""
    apply_child(render_reference_grant(activator, namespace))


def remove_reference_grant(namespace: str) -> bool:
    """Delete `namespace`'s ReferenceGrant to the activator (the caller knows no ModelService
    there scales to zero any more: indexes.zero_in_namespace). True when one of ours was
    deleted. It lives in the activator's namespace, so no owner reference can remove it."""
    activator = activator_of()
    if activator is None:
        return False
    return delete_if("ReferenceGrant", activator.namespace, reference_grant_name(namespace))


def desired_routes(
    owner: Mapping[str, Any],
    spec: ModelServiceSpec,
    plan: TrafficPlan | None,
    canary: Mapping[str, Any] | None,
    primary: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The routes to apply (none without a served Gateway), HTTPRoute then GRPCRoute, their
    canary weight as far as the canary Deployment `canary` has Ready pods. Both go to the
    activator while a model that scales to zero is at zero or has no Ready pod in
    `primary` (its Deployment); the GRPCRoute only where the activator has a gRPC port."""
    http, grpc = routes_served(spec)
    if not http:
        return []
    meta = owner["metadata"]
    desired = plan.canary_replicas if plan is not None else 0
    weights = route_weights(plan, _ready(canary), desired)
    activator = to_activator(owner, spec, primary)
    if activator is not None:
        ensure_reference_grant(activator, meta["namespace"])
    routes = [render_route(meta["name"], meta["namespace"], spec, weights, activator)]
    if grpc:
        grpc_route = render_grpc_route(meta["name"], meta["namespace"], spec, weights, activator)
        routes += [grpc_route] if grpc_route is not None else []
    kopf.adopt(routes, owner=owner_body(owner))  # type: ignore[arg-type]
    return routes


def desired_children(
    owner: Mapping[str, Any],
    spec: ModelServiceSpec,
    default_image: str,
    plan: TrafficPlan | None = None,
    *,
    hold: bool = False,
) -> list[dict[str, Any]]:
    """Every child the spec renders but the routes (desired_routes), adopted by the owner:
    the primary's, then a canary's; `hold`: the HPA's scale-down held (a pod loads)."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    primary_replicas = plan.primary_replicas if plan is not None else None
    children = [
        hold_scale_down(child) if hold and child["kind"] == HPA else child
        for child in render_children(name, namespace, spec, default_image, primary_replicas)
    ]
    children += render_revisions(name, namespace, spec, default_image, plan)
    kopf.adopt(children, owner=owner_body(owner))  # type: ignore[arg-type]
    return children


def desired_child(
    kind: str,
    child_name: str,
    owner: Mapping[str, Any],
    spec: ModelServiceSpec,
    default_image: str,
    *,
    hold: bool = False,
) -> dict[str, Any] | None:
    """The one child of this kind and name the spec renders, adopted (None if it renders
    none: an HPA while autoscaling is off, a canary's child without spec.canary); `hold`:
    an HPA's scale-down held."""
    meta = owner["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    plan = traffic_plan(owner, spec) if spec.canary is not None else None
    if child_name == name:
        primary_replicas = plan.primary_replicas if plan is not None else None
        child = render_child(kind, name, namespace, spec, default_image, primary_replicas)
        if child is not None and hold and kind == HPA:
            child = hold_scale_down(child)
    else:
        child = render_revision_child(kind, child_name, name, namespace, spec, default_image, plan)
    if child is not None:
        kopf.adopt(child, owner=owner_body(owner))  # type: ignore[arg-type]
    return child


def may_have_hpa(indexed: bool, old: Mapping[str, Any] | None) -> bool:
    """Whether a reconcile must look for a stale HPA of ours to remove: one is in the index,
    or (created moments ago, not indexed yet) the previous spec autoscaled. Otherwise none
    of ours exists and the GET is saved (1000 reconciles at once are API-bound)."""
    return indexed or bool(((old or {}).get("spec") or {}).get("autoscaling"))


# Per ModelService that scales to zero: whether its HTTPRoute was last applied to the
# activator, so that its many events re-apply the route only when that changes.
ROUTED_TO_ACTIVATOR: OwnerMemory[bool] = OwnerMemory()
# Per ModelService: the activator pods its Service's hold slice (service_hold.py) was last
# written with; absent: it has none, as far as this process knows.
HELD_BY: OwnerMemory[ActivatorPods] = OwnerMemory()


def activator_pods(activator: ActivatorRef) -> ActivatorPods:
    """The activator's Ready pods, from its Service's EndpointSlices."""
    selector = slices_of_service(activator.name)
    try:
        slices = client().list_objects("EndpointSlice", activator.namespace, selector)
        return ActivatorPods.of(slices)
    except KubeApiError as e:
        raise ReconcileError(f"EndpointSlices of the activator {activator.name}: {e}") from e


def _hold_slice_ours(live: Mapping[str, Any] | None) -> bool:
    labels = ((live or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == HOLD_MANAGER


def _gone(namespace: str, name: str) -> bool:
    """The Service <name>'s hold slice does not exist."""
    try:
        return client().get("EndpointSlice", namespace, hold_slice_name(name)) is None
    except KubeApiError as e:
        raise ReconcileError(f"EndpointSlice {hold_slice_name(name)}: {e}") from e


def sync_hold(
    owner: Mapping[str, Any],
    activator: ActivatorRef | None,
    *,
    service: Mapping[str, Any] | None = None,
    pods: ActivatorPods | None = None,
    recheck: bool = False,
) -> None:
    """While the routes go to `activator`, the Service <name> has a hold slice listing the
    activator's Ready pods (`pods`, read when not given), so that requests sent to the
    Service directly are held as well; otherwise it has none. Written only when that
    changes, or (`recheck`: the scaler's periodic check) when the slice is gone (deleted by
    hand). `service`: the Service as it lives (read when not given: its ClusterIP)."""
    meta = owner["metadata"]
    key, name, namespace = owner_key(meta), meta["name"], meta["namespace"]
    if activator is None:
        # After a restart nothing is remembered: a model still marked at zero may have one.
        if key in HELD_BY or at_zero(owner.get("status")):
            delete_if("EndpointSlice", namespace, hold_slice_name(name), ours=_hold_slice_ours)
            HELD_BY.pop(key)
        return
    pods = pods if pods is not None else activator_pods(activator)
    if HELD_BY.get(key) == pods and not (recheck and pods.addresses and _gone(namespace, name)):
        return
    if service is None:
        try:
            service = client().get("Service", namespace, name)
        except KubeApiError as e:
            raise ReconcileError(f"Service {name}: {e.message or e.reason}") from e
    held = render_hold_slice(name, namespace, service or {}, pods)
    if held is None:  # no activator pod is Ready: nothing to send to
        delete_if("EndpointSlice", namespace, hold_slice_name(name), ours=_hold_slice_ours)
    else:
        kopf.adopt(held, owner=owner_body(owner))  # type: ignore[arg-type]
        apply_child(held)
    HELD_BY.put(key, pods)


def refresh_route(
    owner: Mapping[str, Any],
    canary: Mapping[str, Any] | None,
    logger: logging.Logger | Any,
    primary: Mapping[str, Any] | None = None,
) -> None:
    """Re-apply the routes after an event of the canary's Deployment, so that their
    weight follows the canary's Ready pods (a server-side apply of the same route changes
    nothing); for a model that scales to zero, after an event of its own Deployment
    (`primary`) or of itself, when the route must switch between the activator and the
    model's Service, and the Service's hold slice with them (with no Gateway, the slice
    alone). Failures are logged: the next event or reconcile applies it again."""
    spec = owner_spec(owner)
    if spec is None:
        return
    key = owner_key(owner["metadata"])
    try:
        if spec.canary is not None:
            if gateway_of(spec) is not None:
                plan = traffic_plan(owner, spec)
                for route in desired_routes(owner, spec, plan, canary, primary):
                    apply_child(route)
            return
        if not enabled(zero_plan(spec)):
            ROUTED_TO_ACTIVATOR.pop(key)
            return
        activator = to_activator(owner, spec, primary)
        wanted = activator is not None
        if ROUTED_TO_ACTIVATOR.get(key) is wanted:
            return
        if gateway_of(spec) is not None:
            for route in desired_routes(owner, spec, None, canary, primary):
                apply_child(route)
        sync_hold(owner, activator)
        ROUTED_TO_ACTIVATOR.update(key, lambda _: wanted)
    except ReconcileError as e:
        logger.warning("could not update the routes of %s: %s", owner["metadata"]["name"], e)


def refresh_scale_down(
    owner: Mapping[str, Any], found: Children, logger: logging.Logger | Any
) -> None:
    """Hold the HPA's scale-down while a primary pod loads its model, let it go once none
    does (render.hold_scale_down says why), after any event of a pod or of the HPA.
    Applied only when the HPA's live policy differs from the wanted one; a failure is
    logged, and the next event tries again."""
    spec = owner_spec(owner)
    if spec is None or spec.autoscaling is None or found.hpa is None:
        return
    meta = owner["metadata"]
    pod = first_loading(found.pods)
    no_image = ""  # an HPA names no image
    wanted = desired_child(HPA, meta["name"], owner, spec, no_image, hold=pod is not None)
    if wanted is None or scale_down_held(wanted) == scale_down_held(found.hpa):
        return
    try:
        apply_child(wanted)
    except ReconcileError as e:
        logger.warning("could not update the scale-down of %s: %s", meta["name"], e)
        return
    if pod is not None:
        reason = EventReason.SCALE_DOWN_HELD
        message = (
            f"pod {pod} is loading its model: the HorizontalPodAutoscaler does not scale "
            "down until it is Ready (a scale-down would remove it first)"
        )
    else:
        reason = EventReason.SCALE_DOWN_RESUMED
        message = "no pod is loading its model: the HorizontalPodAutoscaler scales down again"
    logger.info("%s", message)
    normal_event(owner, reason=reason, message=message)


def may_have_revisions(canary_indexed: bool, old: Mapping[str, Any] | None) -> bool:
    """Whether a reconcile must look for a canary's or a Gateway's children to delete: the
    canary Deployment is indexed, or the previous spec had a canary or a gateway (the
    route and the revision Services are not indexed). Otherwise none exists: GETs saved."""
    spec = (old or {}).get("spec") or {}
    return canary_indexed or bool(spec.get("canary") or spec.get("gateway"))


def remove_revisions(owner: Mapping[str, Any], rendered: Iterable[tuple[str, str]]) -> list[str]:
    """Delete the canary's and the Gateway's children this spec no longer renders (a
    canary promoted or rolled back, a gateway removed): their owner is alive, so garbage
    collection would keep them. Returns "Kind name" of each one deleted."""
    meta = owner["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    keep = set(rendered)
    deleted = []
    for kind, child in owned_names(meta["name"]):
        if (kind, child) in keep:
            continue
        if delete_if(kind, namespace, child, lambda live: owned_by(live, uid)):
            deleted.append(f"{kind} {child}")
    return deleted


def restore_routes(owner: Mapping[str, Any], found: Children, logger: logging.Logger | Any) -> None:
    """Apply the routes the spec wants again, after one of them was deleted (drift: the
    route watch saw it go while its owner still wants a Gateway). Failures are logged:
    the next reconcile applies them."""
    spec = owner_spec(owner)
    if spec is None or gateway_of(spec) is None:
        return
    meta = owner["metadata"]
    plan = traffic_plan(owner, spec) if spec.canary is not None else None
    try:
        # The index may not have seen its owner deleted yet (garbage collection deleting
        # the routes): never make a route for an owner that is gone.
        live = (client().get(KIND, meta["namespace"], meta["name"]) or {}).get("metadata") or {}
        if live.get("uid") != meta.get("uid") or live.get("deletionTimestamp"):
            return
        for route in desired_routes(owner, spec, plan, found.canary, found.deployment):
            note_route(apply_child(route))
    except (ReconcileError, KubeApiError) as e:
        logger.warning("could not restore the routes of %s: %s", meta["name"], e)


def remove_stale_route(
    owner: Mapping[str, Any], route: Mapping[str, Any], logger: logging.Logger | Any
) -> None:
    """Delete a route of `owner` that no Gateway wants any more: it was attached to the
    operator's default Gateway, which the operator no longer has (the spec names none, so
    no reconcile would ever see it go). Seen through the routes' watch, so an operator
    started without its old default finds every such route at once."""
    meta, kind = owner["metadata"], str(route.get("kind"))
    name = (route.get("metadata") or {}).get("name") or ""
    try:
        if not delete_if(kind, meta["namespace"], name, lambda live: owned_by(live, meta["uid"])):
            return
    except ReconcileError as e:
        logger.warning("could not delete the stale %s %s: %s", kind, name, e)
        return
    message = (
        f"deleted {kind} {name}: no Gateway any more (spec.gateway is absent and the "
        "operator has no default Gateway)"
    )
    logger.info("%s", message)
    normal_event(owner, reason=EventReason.ROUTE_REMOVED, message=message)


def remove_stale_hpa(namespace: str, name: str) -> bool:
    """Delete the HPA we created earlier when autoscaling was removed from the spec."""
    return delete_if(HPA, namespace, name)


def apply_routes(
    owner: Mapping[str, Any],
    spec: ModelServiceSpec,
    plan: TrafficPlan | None,
    canary: Mapping[str, Any] | None,
    applied: dict[tuple[str, str], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Apply the routes, after the Deployment and the Service (in `applied`, where the
    routes are added): a model that scales to zero routes to the activator (and its
    Service's hold slice lists the activator) until that Deployment reports a Ready pod.
    Returns the routes."""
    name = owner["metadata"]["name"]
    primary = applied.get(("Deployment", name))
    routes = desired_routes(owner, spec, plan, canary, primary)
    for child in routes:
        live = apply_child(child)
        applied[(child["kind"], child["metadata"]["name"])] = live
        note_route(live)  # its status as of now, for condition Routed
    activator = to_activator(owner, spec, primary)
    sync_hold(owner, activator, service=applied.get(("Service", name)))
    if enabled(zero_plan(spec)):
        ROUTED_TO_ACTIVATOR.update(owner_key(owner["metadata"]), lambda _: activator is not None)
    return routes


def reconcile(
    snapshot: Mapping[str, Any],
    spec: ModelServiceSpec,
    default_image: str,
    logger: logging.Logger | Any,
    *,
    may_have_hpa: bool = True,
    pods: Iterable[Mapping[str, Any]] = (),
    may_have_revisions: bool = True,
    canary: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], PodDiagnosis | None]:
    """Apply every child the spec renders, drop a stale HPA and the children of a removed
    canary or gateway; return the new status and what the pods (`pods`, from the index)
    said about it.

    `may_have_hpa=False` skips looking for a stale HPA, `may_have_revisions=False` for a
    removed canary's children: the caller knows none of ours exists. `canary`: the canary
    Deployment as the index holds it (its Ready pods weight the route).
    """
    meta = snapshot["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    plan = traffic_plan(snapshot, spec) if spec.canary is not None else None
    pods = list(pods)
    hold = first_loading(pods) is not None
    applied: dict[tuple[str, str], dict[str, Any]] = {}
    for child in desired_children(snapshot, spec, default_image, plan, hold=hold):
        applied[(child["kind"], child["metadata"]["name"])] = apply_child(child)
    routes = apply_routes(snapshot, spec, plan, canary, applied)
    if may_have_revisions:
        removed = remove_revisions(snapshot, applied)
        if removed:
            normal_event(
                snapshot,
                reason=EventReason.CANARY_REMOVED,
                message=f"deleted {', '.join(removed)}: no longer in the spec "
                "(spec.canary or spec.gateway removed)",
            )
    if plan is not None and plan.reason is Reason.CANNOT_HONOUR:
        kopf.warn(owner_body(snapshot), reason=plan.reason.value, message=plan.message)  # type: ignore[arg-type]
    if spec.autoscaling is None and may_have_hpa and remove_stale_hpa(namespace, name):
        normal_event(
            snapshot,
            reason=EventReason.HPA_REMOVED,
            message="autoscaling removed: deleted the HorizontalPodAutoscaler; "
            f"replicas fixed at {spec.fixed_replicas}",
        )
    kinds, spec_hash = ", ".join(f"{k} {n}" for k, n in applied), spec.pod_template_hash
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
    canary_spec = spec.canary_revision
    status = compute_status(
        name=name,
        namespace=namespace,
        generation=meta.get("generation"),
        spec=spec,
        deployment=applied.get(("Deployment", name)),
        hpa=applied.get((HPA, name)),
        previous=snapshot.get("status"),
        diagnosis=diagnosis,
        plan=plan,
        canary=applied.get(("Deployment", revision_name(name, CANARY))),
        canary_diagnosis=diagnose_pods(pods, canary_spec) if canary_spec else None,
        routed=bool(routes),
        grpc_routed=len(routes) > 1,
        zero_plan=zero_plan(spec),
        routes=routes_of(snapshot),
    )
    return status, diagnosis
