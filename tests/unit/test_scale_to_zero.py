"""Scale to zero without a cluster: the spec's fields, whether it runs (scaling.py), the idle
check and the wake, where the HTTPRoute points, the status at zero, and the settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from modelservice_operator import indexes
from modelservice_operator.reasons import Reason
from modelservice_operator.render import render_hpa
from modelservice_operator.revisions import (
    render_grpc_route,
    render_reference_grant,
    render_route,
)
from modelservice_operator.scaling import (
    Activity,
    called_off_state,
    moved,
    next_scale_state,
    plan_scale_to_zero,
    request_activity,
    route_to_activator,
    wake_replicas,
    wake_requested,
    woken_state,
)
from modelservice_operator.settings import OperatorSettings
from modelservice_operator.spec import InvalidSpec, ModelServiceSpec, parse_spec
from modelservice_operator.status import compute_status
from modelservice_operator.traffic import (
    ActivatorRef,
    RouteDefaults,
    activator_of,
    set_route_defaults,
)

WAKE = "serving.modelservice.io/wake-requested-at"
T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
ACTIVATOR = ActivatorRef("modelservice-system", "msvc-activator", 8080, 8081)


def _spec(**autoscaling: Any) -> ModelServiceSpec:
    body: dict[str, Any] = {
        "model": {"uri": "https://models.example.com/m.onnx"},
        "resources": {"requests": {"cpu": "100m"}},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, **autoscaling},
    }
    return parse_spec(body, "demo")


@pytest.fixture
def routed() -> Iterator[None]:
    """The operator started with a default Gateway and the activator."""
    settings = OperatorSettings.from_env({
        "MODELSERVICE_DEFAULT_GATEWAY": "modelservice-gateway/default",
        "MODELSERVICE_ACTIVATOR": "modelservice-system/msvc-activator:8080:8081",
    })  # fmt: skip
    set_route_defaults(settings.routes)
    yield
    set_route_defaults(RouteDefaults())


# --- the spec --------------------------------------------------------------------------------


def test_min_replicas_zero_alone_is_valid_with_the_defaults() -> None:
    a = _spec().autoscaling
    assert a is not None
    assert (a.min_replicas, a.idle_seconds, a.hold_timeout_seconds) == (0, 300, 300)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("idleSeconds", 9, "idleSeconds"), ("holdTimeoutSeconds", 0, "holdTimeoutSeconds")],
)
def test_out_of_range_idle_or_hold_is_refused_naming_the_field(
    field: str, value: int, needle: str
) -> None:
    with pytest.raises(InvalidSpec, match=needle):
        _spec(**{field: value})


def test_the_hpa_never_goes_below_one() -> None:
    hpa = render_hpa("demo", "ns", _spec())
    assert hpa is not None and hpa["spec"]["minReplicas"] == 1
    two = render_hpa("demo", "ns", _spec(minReplicas=2))
    assert two is not None and two["spec"]["minReplicas"] == 2


# --- whether it runs ---------------------------------------------------------------------------


def test_not_asked_no_plan() -> None:
    assert plan_scale_to_zero(_spec(minReplicas=1)) is None


def test_without_the_activator_it_stays_at_one_and_says_why() -> None:
    for defaults in (RouteDefaults(), RouteDefaults(gateway=activator_gateway())):
        set_route_defaults(defaults)
        plan = plan_scale_to_zero(_spec())
        assert plan is not None and not plan.enabled and plan.reason is Reason.NO_ACTIVATOR
        assert "activator.enabled" in plan.message and "stays at 1" in plan.message
    set_route_defaults(RouteDefaults())


def test_without_a_gateway_the_activator_alone_holds_behind_the_service() -> None:
    """The model's Service points at the activator at zero (service_hold.py): no Gateway
    is needed."""
    set_route_defaults(RouteDefaults(activator=ACTIVATOR))
    try:
        plan = plan_scale_to_zero(_spec())
        assert plan is not None and plan.enabled and plan.reason is Reason.IDLE_SCALING
    finally:
        set_route_defaults(RouteDefaults())


def activator_gateway() -> Any:
    from modelservice_operator.spec_canary import GatewayRef

    return GatewayRef(name="default", namespace="modelservice-gateway")


def test_beside_a_canary_it_is_refused(routed: None) -> None:
    spec = parse_spec(
        {
            "model": {"uri": "https://m/a.onnx"},
            "resources": {"requests": {"cpu": "100m"}},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 2},
            "canary": {"model": {"uri": "https://m/b.onnx"}, "trafficPercent": 10},
        },
        "demo",
    )
    plan = plan_scale_to_zero(spec)
    assert plan is not None and plan.reason is Reason.SCALE_TO_ZERO_WITH_CANARY


def test_with_a_gateway_and_the_activator_it_runs(routed: None) -> None:
    plan = plan_scale_to_zero(_spec(idleSeconds=60, holdTimeoutSeconds=30))
    assert plan is not None and plan.enabled and plan.reason is Reason.IDLE_SCALING
    assert "60 s" in plan.message and "30 s" in plan.message


# --- the idle check ---------------------------------------------------------------------------


METRICS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 7
nv_inference_request_failure{model="m",version="1"} 2
nv_inference_count{model="m",version="1"} 900
nv_inference_pending_request_count{model="m",version="1"} 0
modelservice_request_duration_seconds_bucket{model="m",le="+Inf"} 9
"""


def test_request_activity_sums_the_request_counters_of_every_pod() -> None:
    seen = request_activity([METRICS, METRICS.replace(" 7\n", " 1\n")])
    assert seen == Activity(count=7 + 2 + 1 + 2, busy=False)
    pending = 'nv_inference_pending_request_count{model="m",version="1"}'
    busy = METRICS.replace(f"{pending} 0", f"{pending} 1")
    assert request_activity([busy]).busy
    llm = 'modelservice_generation_requests_running{model="m"} 2\n'
    assert request_activity([llm]) == Activity(0.0, True)


def test_the_first_reading_starts_the_clock() -> None:
    step = next_scale_state({}, Activity(5, False), T0, 10)
    assert step.patch == {"lastRequestCount": 5, "lastRequestAt": "2026-12-07T12:00:00Z"}
    assert not step.scale_down


def test_idle_for_idle_seconds_goes_to_zero_and_not_before() -> None:
    state = {"lastRequestCount": 5, "lastRequestAt": "2026-12-07T12:00:00Z"}
    early = next_scale_state(state, Activity(5, False), T0 + timedelta(seconds=9), 10)
    assert early.patch is None and not early.scale_down
    due = next_scale_state(state, Activity(5, False), T0 + timedelta(seconds=10), 10)
    assert due.scale_down and due.patch == {"atZero": True, "since": "2026-12-07T12:00:10Z"}


def test_a_request_or_one_in_flight_restarts_the_clock() -> None:
    state = {"lastRequestCount": 5, "lastRequestAt": "2026-12-07T12:00:00Z"}
    later = T0 + timedelta(seconds=60)
    for seen in (Activity(6, False), Activity(5, True), Activity(0, False)):  # 0: pods replaced
        step = next_scale_state(state, seen, later, 10)
        assert not step.scale_down
        assert step.patch is not None and step.patch["lastRequestAt"] == "2026-12-07T12:01:00Z"


def test_nothing_known_or_already_at_zero_changes_nothing() -> None:
    state = {"lastRequestCount": 5, "lastRequestAt": "2026-12-07T12:00:00Z"}
    late = T0 + timedelta(hours=1)
    # None: a pod still loading, or one that could not be read: never scaled away.
    assert next_scale_state(state, None, late, 10).patch is None
    assert not next_scale_state(state, None, late, 10).scale_down
    zero = {**state, "atZero": True}
    assert not next_scale_state(zero, Activity(5, False), late, 10).scale_down


def test_a_request_between_the_decision_and_the_pods_removal_calls_it_off() -> None:
    state = {"atZero": True, "lastRequestCount": 5, "lastRequestAt": "2026-12-07T12:00:00Z"}
    assert not moved(state, Activity(5, False))
    assert not moved(state, None)  # unknown: the decision stands
    assert moved(state, Activity(6, False)) and moved(state, Activity(5, True))
    assert called_off_state(Activity(6, False), T0) == {
        "atZero": False, "lastRequestCount": 6, "lastRequestAt": "2026-12-07T12:00:00Z",
    }  # fmt: skip


# --- the wake ---------------------------------------------------------------------------------


def test_a_wake_asked_at_or_after_going_to_zero_wakes_it() -> None:
    status = {"scaleToZero": {"atZero": True, "since": "2026-12-07T12:00:10Z"}}
    assert wake_requested(status, {WAKE: "2026-12-07T12:00:10Z"})
    assert wake_requested(status, {WAKE: "2026-12-07T12:05:00.123456Z"})
    assert not wake_requested(status, {WAKE: "2026-12-07T11:59:00Z"})  # an old wake
    assert not wake_requested(status, {})
    assert not wake_requested(status, {WAKE: "not a time"})
    assert not wake_requested({"scaleToZero": {"atZero": False}}, {WAKE: "2026-12-07T12:05:00Z"})


def test_woken_restarts_the_idle_clock() -> None:
    state = woken_state(T0)
    assert state["atZero"] is False and state["lastRequestAt"] == "2026-12-07T12:00:00Z"
    assert state["lastRequestCount"] is None  # the new pods count from zero
    assert wake_replicas(_spec()) == 1 and wake_replicas(_spec(minReplicas=2)) == 2


def test_two_wake_requests_from_one_stay_at_zero_wake_it_once(
    routed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two activators asking at once: both events' bodies still say atZero (the first
    wake's status write lands later), and the model is woken once; after its next stay at
    zero, a request wakes it again. (CI saw two ScaledFromZero events before this.)"""
    import logging

    from modelservice_operator import scaler

    woken: list[str] = []
    monkeypatch.setattr(scaler, "wake", lambda owner, spec, logger: woken.append(owner["x"]))
    # The Gateway API served (what zero_plan asks the API server's discovery).
    monkeypatch.setattr(scaler, "zero_plan", lambda s: plan_scale_to_zero(s))

    def event(since: str, asked: str, x: str) -> dict[str, Any]:
        body = {
            "metadata": {"name": "demo", "namespace": "ns", "uid": "u1",
                         "annotations": {WAKE: asked}},
            "spec": {"model": {"uri": "https://models.example.com/m.onnx"},
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 3}},
            "status": {"scaleToZero": {"atZero": True, "since": since}},
        }  # fmt: skip
        return {**indexes.modelservice_entry(body), "x": x}

    log = logging.getLogger(__name__)
    try:
        first = scaler.wake_if_asked(
            event("2026-12-07T12:00:00Z", "2026-12-07T12:05:00Z", "a"), log
        )
        second = scaler.wake_if_asked(
            event("2026-12-07T12:00:00Z", "2026-12-07T12:05:01Z", "b"), log
        )
        assert (first, second) == (True, False)
        assert scaler.wake_if_asked(event("2026-12-07T13:00:00Z", "2026-12-07T13:00:09Z", "c"), log)
        assert woken == ["a", "c"]
    finally:
        scaler.forget({"name": "demo", "namespace": "ns", "uid": "u1"})


# --- the route ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled", "zero", "ready", "activator"),
    [
        (True, True, 0, True),
        (True, False, 0, True),  # waking (or starting): no Ready pod yet
        (True, True, 1, True),  # status still says zero
        (True, False, 1, False),
        (False, True, 0, False),
        (False, False, 0, False),
    ],
)
def test_the_route_goes_to_the_activator_until_a_pod_is_ready(
    enabled: bool, zero: bool, ready: int, activator: bool
) -> None:
    assert route_to_activator(enabled, zero, ready) is activator


def assert_at_the_activator(route: dict[str, Any], port: int) -> None:
    """The route's one rule sends to the activator's Service on `port`, naming the
    ModelService ns1/demo in the target header."""
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{
        "group": "", "kind": "Service", "name": "msvc-activator",
        "namespace": "modelservice-system", "port": port, "weight": 1,
    }]  # fmt: skip
    assert rule["filters"] == [{
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": "X-ModelService-Target", "value": "ns1/demo"}]},
    }]  # fmt: skip


def test_the_route_at_the_activator_names_the_modelservice(routed: None) -> None:
    assert_at_the_activator(render_route("demo", "ns1", _spec(), (100, 0), ACTIVATOR), 8080)
    back = render_route("demo", "ns1", _spec(), (100, 0))
    assert back["spec"]["rules"] == [{"backendRefs": [{"name": "demo", "port": 80, "weight": 1}]}]


def test_the_grpc_route_at_the_activator_names_the_modelservice_on_its_grpc_port(
    routed: None,
) -> None:
    route = render_grpc_route("demo", "ns1", _spec(), (100, 0), ACTIVATOR)
    assert route is not None and route["kind"] == "GRPCRoute"
    assert route["spec"]["hostnames"] == ["grpc.demo.ns1.models.internal"]
    assert_at_the_activator(route, 8081)
    back = render_grpc_route("demo", "ns1", _spec(), (100, 0))
    assert back is not None
    assert back["spec"]["rules"] == [{"backendRefs": [{"name": "demo", "port": 8081, "weight": 1}]}]
    # An activator without a gRPC port (an operator configured before it had one): the
    # GRPCRoute stays at the model's Service; gRPC off: no GRPCRoute.
    http_only = ActivatorRef("modelservice-system", "msvc-activator", 8080)
    assert render_grpc_route("demo", "ns1", _spec(), (100, 0), http_only) == back
    off = parse_spec({**_spec().model_dump(by_alias=True, exclude_none=True),
                      "runtime": {"grpc": {"enabled": False}}}, "demo")  # fmt: skip
    assert render_grpc_route("demo", "ns1", off, (100, 0), ACTIVATOR) is None


def test_the_reference_grant_lets_one_namespaces_routes_reach_the_activator() -> None:
    grant = render_reference_grant(ACTIVATOR, "ns1")
    assert grant["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
    assert grant["metadata"]["namespace"] == "modelservice-system"
    assert grant["spec"]["from"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "ns1"},
        {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "namespace": "ns1"},
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Service", "name": "msvc-activator"}]


# --- the status ------------------------------------------------------------------------------


def _status(spec: ModelServiceSpec, previous: dict[str, Any], ready: int) -> dict[str, Any]:
    deployment = {
        "metadata": {"generation": 1},
        "spec": {"replicas": ready},
        "status": {
            "observedGeneration": 1, "replicas": ready, "readyReplicas": ready,
            "updatedReplicas": ready, "availableReplicas": ready,
        },
    }  # fmt: skip
    hpa = {"status": {"desiredReplicas": 1, "currentReplicas": 1}}
    plan = plan_scale_to_zero(spec)
    return compute_status(
        name="demo", namespace="ns", generation=1, spec=spec, deployment=deployment, hpa=hpa,
        previous=previous, now="2026-12-07T12:00:00Z", zero_plan=plan,
    )  # fmt: skip


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_at_zero_the_model_is_ready_with_none_wanted(routed: None) -> None:
    status = _status(_spec(), {"scaleToZero": {"atZero": True}}, 0)
    assert status["phase"] == "Ready" and status["desiredReplicas"] == 0
    assert _cond(status, "Ready")["reason"] == "ScaledToZero"
    assert {"status": "True", "reason": "AtZero"}.items() <= _cond(status, "ScaleToZero").items()
    assert "scaleToZero" not in status  # the scaler's alone


def test_up_it_reports_idle_scaling_and_refused_it_says_why(routed: None) -> None:
    up = _status(_spec(), {}, 1)
    assert up["phase"] == "Ready" and _cond(up, "ScaleToZero")["reason"] == "IdleScaling"
    set_route_defaults(RouteDefaults())
    refused = _status(_spec(), {"scaleToZero": {"atZero": True}}, 1)
    assert _cond(refused, "ScaleToZero")["status"] == "False"
    assert _cond(refused, "ScaleToZero")["reason"] == "NoActivator"
    assert refused["desiredReplicas"] == 1  # not at zero when it cannot be
    plain = _status(_spec(minReplicas=1), {}, 1)
    assert not any(c["type"] == "ScaleToZero" for c in plain["conditions"])


# --- the settings ------------------------------------------------------------------------------


def test_the_activator_setting() -> None:
    settings = OperatorSettings.from_env({"MODELSERVICE_ACTIVATOR": "ops/act:8080:8081"})
    assert settings.routes.activator == ActivatorRef("ops", "act", 8080, 8081)
    http_only = OperatorSettings.from_env({"MODELSERVICE_ACTIVATOR": "ops/act:8080"})
    assert http_only.routes.activator == ActivatorRef("ops", "act", 8080, None)
    assert OperatorSettings.from_env({}).routes.activator is None
    bad_ones = ("ops/act", "act:80", "ops/Act:80", "ops/act:0", "ops/act:x", "ops/act:80:",
                "ops/act:80:0", "ops/act:80:70000", "ops/act:80:x", "ops/act:80:81:82")  # fmt: skip
    for bad in bad_ones:
        with pytest.raises(ValueError, match="MODELSERVICE_ACTIVATOR"):
            OperatorSettings.from_env({"MODELSERVICE_ACTIVATOR": bad})
    set_route_defaults(settings.routes)
    try:
        assert activator_of() == ActivatorRef("ops", "act", 8080, 8081)
    finally:
        set_route_defaults(RouteDefaults())


def _body(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"namespace": namespace, "name": name, "uid": name, "generation": 1}
    return {"metadata": meta, "spec": spec}


def test_a_namespaces_grant_is_needed_while_one_of_its_modelservices_asks_for_zero() -> None:
    """The ReferenceGrant of a namespace goes only when no ModelService there asks for scale
    to zero (indexes.zero_in_namespace over the ModelService index's entries)."""
    model = {"model": {"uri": "https://models.example.com/m.onnx"}}
    zero = {**model, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}
    one = {**model, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}
    bad = {**zero, "autoscaling": {"minReplicas": 0, "maxReplicas": "many"}}
    assert indexes.asked_for_zero(_body("a", "z", zero))
    assert not indexes.asked_for_zero(_body("a", "o", one))
    assert not indexes.asked_for_zero(_body("a", "m", model)) and not indexes.asked_for_zero(None)

    def index(*bodies: dict[str, Any]) -> Any:
        return {(b["metadata"]["namespace"], b["metadata"]["name"]):
                [indexes.modelservice_entry(b)] for b in bodies}  # fmt: skip

    assert indexes.zero_in_namespace(index(_body("a", "z", zero), _body("a", "o", one)), "a")
    # Another namespace's model, or one that does not ask, keeps nothing.
    assert not indexes.zero_in_namespace(index(_body("b", "z", zero), _body("a", "o", one)), "a")
    # A spec that does not parse may have routed to the activator: the grant stays.
    assert indexes.zero_in_namespace(index(_body("a", "x", bad)), "a")
