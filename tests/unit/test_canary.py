"""Canary revisions without a cluster: the split decided from the spec (traffic.py), the
children it renders (revisions.py), the primary's share, and status.canary with condition
CanaryTraffic (status.py)."""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator import indexes, render
from modelservice_operator.drift import drift
from modelservice_operator.reasons import Reason
from modelservice_operator.reconcile import desired_child, desired_children, traffic_plan
from modelservice_operator.revisions import (
    clash_candidates,
    name_clash,
    owned_names,
    render_grpc_route,
    render_revision_child,
    render_revisions,
    render_route,
)
from modelservice_operator.settings import OperatorSettings
from modelservice_operator.spec import ModelServiceSpec, parse_spec
from modelservice_operator.status import compute_status
from modelservice_operator.traffic import (
    RouteDefaults,
    SplitMode,
    TrafficPlan,
    grpc_route_host,
    percents_that_work,
    plan_traffic,
    replica_split,
    route_weights,
    set_route_defaults,
)

IMAGE = "runtime:test"
URI = "https://models.example.com/v1.onnx"
URI2 = "https://models.example.com/v2.onnx"
SHA2 = "b" * 64
REVISION = "serving.modelservice.io/revision"
STANDARD = {
    "app.kubernetes.io/name": "modelservice-runtime",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/managed-by": "modelservice-operator",
}


def _spec(percent: int = 20, replicas: int | None = 5, **extra: Any) -> ModelServiceSpec:
    body: dict[str, Any] = {
        "model": {"uri": URI, "name": "resnet"},
        "canary": {"model": {"uri": URI2, "sha256": SHA2}, "trafficPercent": percent},
        **extra,
    }
    if replicas is not None:
        body["replicas"] = replicas
    return parse_spec(body, "demo")


def _plan(spec: ModelServiceSpec, gateway_api: bool = False) -> TrafficPlan:
    plan = plan_traffic(spec, "ns1", "demo", gateway_api=gateway_api)
    assert plan is not None
    return plan


def _by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


# --- the split ---------------------------------------------------------------------------


def test_no_canary_no_plan() -> None:
    spec = parse_spec({"model": {"uri": URI}}, "demo")
    assert plan_traffic(spec, "ns1", "demo", gateway_api=True) is None


@pytest.mark.parametrize(
    ("percent", "replicas", "primary", "canary"),
    [(20, 5, 4, 1), (0, 5, 5, 0), (100, 5, 0, 5), (50, 4, 2, 2), (10, 10, 9, 1), (0, 0, 0, 0)],
)
def test_without_a_gateway_the_replica_count_carries_the_split(
    percent: int, replicas: int, primary: int, canary: int
) -> None:
    plan = _plan(_spec(percent, replicas))
    assert plan.mode is SplitMode.REPLICAS and plan.honoured
    assert (plan.primary_replicas, plan.canary_replicas) == (primary, canary)
    assert plan.reason is Reason.SPLIT_BY_REPLICAS


def test_a_percent_the_replicas_cannot_carry_is_refused_and_says_what_works() -> None:
    plan = _plan(_spec(30, 5))
    assert not plan.honoured and plan.reason is Reason.CANNOT_HONOUR
    assert plan.canary_replicas == 0 and plan.primary_replicas is None  # primary untouched
    assert plan.message == (
        "spec.canary.trafficPercent=30 cannot be honoured by replica count with "
        "spec.replicas=5 (the canary would need 1.5 replicas): with 5 replicas use "
        "trafficPercent 0, 20, 40, 60, 80, 100, or set spec.replicas to a multiple of 10, or "
        "name a Gateway in spec.gateway; the canary runs no pods until it can"
    )


def test_the_default_single_replica_honours_only_0_and_100() -> None:
    assert percents_that_work(1) == [0, 100]
    assert _plan(_spec(100, None)).canary_replicas == 1
    assert not _plan(_spec(50, None)).honoured


def test_with_autoscaling_and_no_gateway_only_zero_is_honoured() -> None:
    scaled = {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}
    refused = _plan(_spec(20, None, **scaled))
    assert not refused.honoured and refused.canary_replicas == 0
    assert "while spec.autoscaling is set" in refused.message
    zero = _plan(_spec(0, None, **scaled))
    assert zero.honoured and zero.canary_replicas == 0 and zero.primary_replicas is None


def test_through_a_gateway_the_canary_runs_its_share_and_the_primary_keeps_its_count() -> None:
    spec = _spec(20, 4, gateway={"name": "gw", "namespace": "infra"})
    plan = _plan(spec, gateway_api=True)
    assert plan.mode is SplitMode.ROUTE and plan.honoured and plan.reason is Reason.SPLIT_BY_ROUTE
    assert plan.primary_replicas is None and plan.canary_replicas == 1  # ceil(4 * 0.2)
    assert "Gateway infra/gw" in plan.message
    # Even at 0% the canary is warm (one pod), so moving traffic later finds it Ready.
    assert _plan(_spec(0, 4, gateway={"name": "gw"}), gateway_api=True).canary_replicas == 1
    # Any percent works through a route, autoscaling too (sized from minReplicas).
    scaled = _spec(
        30, None, gateway={"name": "gw"}, autoscaling={"minReplicas": 3, "maxReplicas": 9}
    )
    assert _plan(scaled, gateway_api=True).canary_replicas == 1


def test_a_gateway_without_the_gateway_api_falls_back_to_replicas_and_says_so() -> None:
    spec = _spec(20, 5, gateway={"name": "gw"})
    plan = _plan(spec, gateway_api=False)
    assert plan.mode is SplitMode.REPLICAS and plan.honoured
    assert plan.reason is Reason.GATEWAY_API_MISSING
    assert plan.message.startswith(
        "spec.gateway names Gateway ns1/gw, but the cluster does not serve the Gateway API"
    )
    refused = _plan(_spec(30, 5, gateway={"name": "gw"}), gateway_api=False)
    assert refused.reason is Reason.CANNOT_HONOUR and "Gateway API" in refused.message


@pytest.mark.parametrize(
    ("percent", "ready", "desired", "weights"),
    [(20, 0, 2, (100, 0)), (20, 1, 2, (90, 10)), (20, 2, 2, (80, 20)), (100, 3, 3, (0, 100)),
     (0, 1, 1, (100, 0)), (100, 5, 3, (0, 100))],
)  # fmt: skip
def test_route_weights_move_only_with_ready_canary_pods(
    percent: int, ready: int, desired: int, weights: tuple[int, int]
) -> None:
    plan = _plan(_spec(percent, 4, gateway={"name": "gw"}), gateway_api=True)
    assert route_weights(plan, ready, desired) == weights


def test_replica_split_is_the_share_of_ready_pods() -> None:
    assert replica_split(4, 1) == (80, 20)
    assert replica_split(0, 0) is None


# --- the children --------------------------------------------------------------------------


def test_canary_deployment_is_the_primarys_template_with_the_canarys_model() -> None:
    spec = _spec(20, 5, runtime={"image": "rt:1"}, canary={
        "model": {"uri": URI2, "sha256": SHA2, "secretRef": {"name": "creds"}},
        "runtime": {"image": "rt:2"}, "trafficPercent": 20,
    })  # fmt: skip
    plan = _plan(spec)
    children = _by_name(render_revisions("demo", "ns1", spec, IMAGE, plan))
    dep = children[("Deployment", "demo-canary")]
    primary = render.render_deployment("demo", "ns1", spec, IMAGE, plan.primary_replicas)
    assert dep["metadata"]["labels"] == STANDARD | {REVISION: "canary"}
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "modelservice-runtime",
        "app.kubernetes.io/instance": "demo",
        REVISION: "canary",
    }
    pod = dep["spec"]["template"]
    assert pod["metadata"]["labels"] == STANDARD | {REVISION: "canary"}
    assert primary["spec"]["template"]["metadata"]["labels"] == STANDARD | {REVISION: "primary"}
    assert (dep["spec"]["replicas"], primary["spec"]["replicas"]) == (1, 4)
    runtime = pod["spec"]["containers"][0]
    fetch = pod["spec"]["initContainers"][0]
    assert (
        runtime["image"] == "rt:2"
        and primary["spec"]["template"]["spec"]["containers"][0]["image"] == "rt:1"
    )
    # The same served name as the primary: clients see one endpoint.
    assert runtime["command"][runtime["command"].index("--name") + 1] == "resnet"
    assert fetch["command"][2] == URI2 and fetch["command"][-1] == SHA2
    assert fetch["envFrom"] == [{"secretRef": {"name": "creds"}}]
    annotations = pod["metadata"]["annotations"]
    assert annotations[render.SPEC_HASH_ANNOTATION] != spec.pod_template_hash
    # Everything else is the primary's pod: probes, security, volumes.
    primary_pod = primary["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes", "terminationGracePeriodSeconds"):
        assert pod["spec"][key] == primary_pod[key]
    assert runtime["readinessProbe"] == primary_pod["containers"][0]["readinessProbe"]


def test_served_name_defaults_to_the_modelservice_name_for_both_revisions() -> None:
    spec = parse_spec(
        {"model": {"uri": URI}, "canary": {"model": {"uri": URI2}, "trafficPercent": 100}},
        "demo",
    )
    dep = _by_name(render_revisions("demo", "ns1", spec, IMAGE, _plan(spec)))[
        ("Deployment", "demo-canary")
    ]
    command = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--name") + 1] == "demo"


def test_revision_services_select_one_revision_and_the_main_service_both() -> None:
    spec = _spec()
    children = _by_name(render_revisions("demo", "ns1", spec, IMAGE, _plan(spec)))
    main = render.render_service("demo", "ns1", spec)
    assert REVISION not in main["spec"]["selector"]  # both revisions' ready pods
    for revision in ("primary", "canary"):
        svc = children[("Service", f"demo-{revision}")]
        assert svc["spec"]["selector"] == main["spec"]["selector"] | {REVISION: revision}
        assert svc["spec"]["ports"] == main["spec"]["ports"]
        assert svc["metadata"]["labels"] == STANDARD | {REVISION: revision}


def test_no_canary_renders_no_revision_children_and_they_are_all_prunable() -> None:
    spec = parse_spec({"model": {"uri": URI}}, "demo")
    assert render_revisions("demo", "ns1", spec, IMAGE, None) == []
    assert (
        render_revision_child("Deployment", "demo-canary", "demo", "ns1", spec, IMAGE, None) is None
    )
    assert owned_names("demo") == [
        ("Deployment", "demo-canary"),
        ("Service", "demo-canary"),
        ("Service", "demo-primary"),
        ("HTTPRoute", "demo"),
        ("GRPCRoute", "demo"),
    ]


def test_http_route_weights_the_two_revision_services_on_the_named_gateway() -> None:
    spec = _spec(20, 4, gateway={"name": "gw", "namespace": "infra"})
    route = render_route("demo", "ns1", spec, (80, 20))
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["kind"] == "HTTPRoute"
    assert route["metadata"] == {"name": "demo", "namespace": "ns1", "labels": STANDARD}
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "gw",
            "namespace": "infra",
        }
    ]
    assert route["spec"]["hostnames"] == ["demo.ns1.models.internal"]
    assert route["spec"]["rules"] == [
        {
            "backendRefs": [
                {"name": "demo-primary", "port": 80, "weight": 80},
                {"name": "demo-canary", "port": 80, "weight": 20},
            ]
        }
    ]


def test_http_route_without_a_canary_sends_everything_to_the_one_service() -> None:
    spec = parse_spec({"model": {"uri": URI}, "gateway": {"name": "gw"}}, "demo")
    route = render_route("demo", "ns1", spec, (100, 0))
    assert route["spec"]["parentRefs"][0]["namespace"] == "ns1"  # the ModelService's
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": "demo", "port": 80, "weight": 1}]}]


@pytest.fixture
def default_gateway() -> Any:
    """The operator started with MODELSERVICE_DEFAULT_GATEWAY and a domain of its own."""
    settings = OperatorSettings.from_env({
        "MODELSERVICE_DEFAULT_GATEWAY": "modelservice-gateway/default",
        "MODELSERVICE_GATEWAY_DOMAIN": "ai.example.com",
    })  # fmt: skip
    set_route_defaults(settings.routes)
    yield settings.routes
    set_route_defaults(RouteDefaults())


def test_the_operators_default_gateway_takes_a_modelservice_without_spec_gateway(
    default_gateway: RouteDefaults,
) -> None:
    spec = _spec(20, 4)
    plan = _plan(spec, gateway_api=True)
    assert plan.mode is SplitMode.ROUTE
    assert "on Gateway modelservice-gateway/default" in plan.message
    route = render_route("demo", "ns1", spec, (80, 20))
    parent = route["spec"]["parentRefs"][0]
    assert (parent["namespace"], parent["name"]) == ("modelservice-gateway", "default")
    assert route["spec"]["hostnames"] == ["demo.ns1.ai.example.com"]
    # spec.gateway still wins over the default.
    named = render_route("demo", "ns1", _spec(20, 4, gateway={"name": "gw"}), (80, 20))
    assert named["spec"]["parentRefs"][0]["name"] == "gw"
    # Without the Gateway API the fallback names the default as the Gateway it could not use.
    fallback = _plan(spec, gateway_api=False)
    assert fallback.mode is SplitMode.REPLICAS
    assert fallback.message.startswith(
        "the operator's default is Gateway modelservice-gateway/default, but the cluster does "
        "not serve the Gateway API"
    )


def test_without_a_default_or_spec_gateway_there_is_no_route() -> None:
    spec = _spec(20, 5)
    assert _plan(spec, gateway_api=True).mode is SplitMode.REPLICAS
    with pytest.raises(AssertionError):
        render_route("demo", "ns1", spec, (80, 20))


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MODELSERVICE_DEFAULT_GATEWAY": "default"}, "MODELSERVICE_DEFAULT_GATEWAY"),
        ({"MODELSERVICE_DEFAULT_GATEWAY": "Infra/gw"}, "MODELSERVICE_DEFAULT_GATEWAY"),
        ({"MODELSERVICE_GATEWAY_DOMAIN": "not a domain"}, "MODELSERVICE_GATEWAY_DOMAIN"),
        # 121 characters: a route host of a 63-character name and namespace would pass 253.
        ({"MODELSERVICE_GATEWAY_DOMAIN": "a" * 60 + "." + "b" * 60}, "at most 120"),
    ],
)
def test_bad_gateway_settings_are_refused_naming_the_variable(
    env: dict[str, str], field: str
) -> None:
    with pytest.raises(ValueError, match=field) as refused:
        OperatorSettings.from_env(env)
    assert next(iter(env)) in str(refused.value)


def test_the_longest_gateway_domain_still_gives_valid_route_hosts() -> None:
    domain = "a" * 59 + "." + "b" * 60  # 120 characters
    settings = OperatorSettings.from_env({"MODELSERVICE_GATEWAY_DOMAIN": domain})
    set_route_defaults(settings.routes)
    try:
        host = grpc_route_host("n" * 63, "s" * 63)
    finally:
        set_route_defaults(RouteDefaults())
    assert len(host) == 253


def test_grpc_route_splits_grpc_the_same_way_on_its_own_host() -> None:
    spec = _spec(20, 4, gateway={"name": "gw", "namespace": "infra"})
    http, grpc = (
        render_route("demo", "ns1", spec, (80, 20)),
        render_grpc_route("demo", "ns1", spec, (80, 20)),
    )
    assert grpc is not None and grpc["kind"] == "GRPCRoute"
    assert grpc["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert grpc["spec"]["parentRefs"] == http["spec"]["parentRefs"]
    # Its own host: a GRPCRoute and an HTTPRoute may not share one on a listener.
    assert grpc["spec"]["hostnames"] == ["grpc.demo.ns1.models.internal"]
    assert grpc["spec"]["rules"] == [
        {
            "backendRefs": [
                {"name": "demo-primary", "port": 8081, "weight": 80},
                {"name": "demo-canary", "port": 8081, "weight": 20},
            ]
        }
    ]
    off = _spec(20, 4, gateway={"name": "gw"}, runtime={"grpc": {"enabled": False}})
    assert render_grpc_route("demo", "ns1", off, (80, 20)) is None


# --- status --------------------------------------------------------------------------------


def _dep(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
            "availableReplicas": ready,
        },
    }


def _status(spec: ModelServiceSpec, plan: TrafficPlan | None, **kw: Any) -> dict[str, Any]:
    return compute_status(
        name="demo", namespace="ns1", generation=1, spec=spec, hpa=None, plan=plan,
        now="2026-12-07T00:00:00Z", **kw,
    )  # fmt: skip


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status["conditions"] if c["type"] == ctype), None)


def test_status_shows_both_revisions_and_the_replica_split_in_effect() -> None:
    spec = _spec(20, 5)
    status = _status(spec, _plan(spec), deployment=_dep(4, 4), canary=_dep(1, 1))
    assert status["phase"] == "Ready" and status["desiredReplicas"] == 4  # the primary's share
    assert status["canary"] == {
        "trafficPercent": 20,
        "mode": "ReplicaCount",
        "primaryWeight": 80,
        "canaryWeight": 20,
        "primary": {"deployment": "demo", "modelUri": URI, "replicas": 4, "readyReplicas": 4,
                    "desiredReplicas": 4},
        "canary": {"deployment": "demo-canary", "modelUri": URI2, "modelSha256": SHA2,
                   "replicas": 1, "readyReplicas": 1, "desiredReplicas": 1},
    }  # fmt: skip
    cond = _condition(status, "CanaryTraffic")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "SplitByReplicas")


def test_status_of_a_refused_split_is_a_false_condition_naming_the_field() -> None:
    spec = _spec(30, 5)
    status = _status(spec, _plan(spec), deployment=_dep(5, 5), canary=_dep(0, 0))
    cond = _condition(status, "CanaryTraffic")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "CannotHonour")
    assert "spec.canary.trafficPercent=30" in cond["message"]
    assert status["phase"] == "Ready" and status["desiredReplicas"] == 5  # the primary serves
    assert status["canary"]["canaryWeight"] == 0


def test_status_route_weights_follow_the_canarys_ready_pods() -> None:
    spec = _spec(20, 4, gateway={"name": "gw"})
    plan = _plan(spec, gateway_api=True)
    waiting = _status(spec, plan, deployment=_dep(4, 4), canary=_dep(1, 0))
    assert (waiting["canary"]["primaryWeight"], waiting["canary"]["canaryWeight"]) == (100, 0)
    ready = _status(spec, plan, deployment=_dep(4, 4), canary=_dep(1, 1))
    assert (ready["canary"]["primaryWeight"], ready["canary"]["canaryWeight"]) == (80, 20)
    assert ready["canary"]["mode"] == "HTTPRoute"
    assert (ready["gateway"], ready["gatewayHost"]) == (None, None)  # no route was applied
    routed = _status(spec, plan, deployment=_dep(4, 4), canary=_dep(1, 1), routed=True)
    assert (routed["gateway"], routed["gatewayHost"]) == ("ns1/gw", "demo.ns1.models.internal")
    assert routed["gatewayGrpcHost"] is None
    both = _status(
        spec, plan, deployment=_dep(4, 4), canary=_dep(1, 1), routed=True, grpc_routed=True
    )
    assert both["gatewayGrpcHost"] == "grpc.demo.ns1.models.internal"


def test_without_a_canary_status_canary_is_cleared_and_no_condition() -> None:
    spec = parse_spec({"model": {"uri": URI}}, "demo")
    status = _status(spec, None, deployment=_dep(1, 1))
    assert status["canary"] is None  # null in a merge patch removes an old one
    assert _condition(status, "CanaryTraffic") is None


# --- names shared with another ModelService's children --------------------------------------

EARLY, LATE = "2026-12-07T08:00:00Z", "2026-12-07T09:00:00Z"


def test_a_canary_whose_children_would_take_an_older_modelservices_names_is_refused() -> None:
    assert clash_candidates("a") == ["a-primary", "a-canary"]
    assert clash_candidates("a-canary") == ["a-canary-primary", "a-canary-canary", "a"]
    message = name_clash("a", LATE, True, {"a-canary": (False, EARLY)})
    assert message is not None and message.startswith("spec.canary: ")
    assert "ModelService a-canary (created first)" in message
    # Created first, or without a canary: nothing to refuse.
    assert name_clash("a", EARLY, True, {"a-canary": (False, LATE)}) is None
    assert name_clash("a", LATE, False, {"a-canary": (False, EARLY)}) is None


def test_a_modelservice_named_like_an_older_ones_canary_child_is_refused() -> None:
    message = name_clash("a-primary", LATE, False, {"a": (True, EARLY)})
    assert message is not None and message.startswith("metadata.name: ModelService a ")
    assert name_clash("a-primary", LATE, False, {"a": (False, EARLY)}) is None
    assert name_clash("a-primary", EARLY, False, {"a": (True, LATE)}) is None


# --- drift and the indexes: children told apart by name ---------------------------------------


def _owner(spec: dict[str, Any]) -> dict[str, Any]:
    return indexes.snapshot({
        "apiVersion": "serving.modelservice.io/v1alpha1", "kind": "ModelService",
        "metadata": {"name": "demo", "namespace": "ns1", "uid": "u1", "generation": 2},
        "spec": spec,
    })  # fmt: skip


CANARY_SPEC = {
    "model": {"uri": URI},
    "replicas": 5,
    "canary": {"model": {"uri": URI2}, "trafficPercent": 20},
}


def test_drift_renders_the_child_of_the_events_name_not_only_its_kind() -> None:
    owner = _owner(CANARY_SPEC)
    spec = parse_spec(CANARY_SPEC, "demo")
    applied = {
        (c["kind"], c["metadata"]["name"]): c
        for c in desired_children(owner, spec, IMAGE, traffic_plan(owner, spec))
    }
    for (kind, name), live in applied.items():
        wanted = desired_child(kind, name, owner, spec, IMAGE)
        assert wanted is not None and drift(live, "MODIFIED", wanted) is None, (kind, name)
    assert applied[("Deployment", "demo")]["spec"]["replicas"] == 4
    assert applied[("Deployment", "demo-canary")]["spec"]["replicas"] == 1
    assert all(c["metadata"]["ownerReferences"][0]["uid"] == "u1" for c in applied.values())
    # Edited away (the canary scaled by hand) is drift; a removed canary's child is not.
    edited = dict(applied[("Deployment", "demo-canary")], spec={"replicas": 3})
    wanted = desired_child("Deployment", "demo-canary", owner, spec, IMAGE)
    assert drift(edited, "MODIFIED", wanted) == "edited"
    plain = parse_spec({"model": {"uri": URI}, "replicas": 5}, "demo")
    assert desired_child("Deployment", "demo-canary", _owner({}), plain, IMAGE) is None


def test_the_indexes_hand_out_the_canary_deployment_apart_from_the_primary() -> None:
    owner = _owner(CANARY_SPEC)
    primary = {"metadata": {"name": "demo"}, "status": {"readyReplicas": 4}}
    canary = {"metadata": {"name": "demo-canary"}, "status": {"readyReplicas": 1}}
    deployments = {("ns1", "demo"): [primary], ("ns1", "demo-canary"): [canary]}
    found = indexes.children(owner, deployments, {}, {})  # type: ignore[arg-type]
    assert (found.deployment, found.canary) == (primary, canary)
    gone = indexes.children(owner, deployments, {}, {}, canary=None)  # type: ignore[arg-type]
    assert (gone.deployment, gone.canary) == (primary, None)
    without = indexes.children(_owner({"model": {"uri": URI}}), deployments, {}, {})  # type: ignore[arg-type]
    assert without.canary is None
