"""Status derived from the children: phase, counts, conditions (pure function)."""

from __future__ import annotations

from typing import Any

from modelservice_operator.spec import parse_spec
from modelservice_operator.status import compute_status, invalid_status, rollout_complete

URI = "https://h/m.onnx"
NOW = "2026-01-01T00:00:00Z"


def _dep(
    want: int,
    *,
    gen: int = 2,
    observed: int = 2,
    replicas: int | None = None,
    updated: int | None = None,
    ready: int | None = None,
    available: int | None = None,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": observed,
            "replicas": want if replicas is None else replicas,
            "updatedReplicas": want if updated is None else updated,
            "readyReplicas": want if ready is None else ready,
            "availableReplicas": want if available is None else available,
            "conditions": conditions or [],
        },
    }


def _status(spec_raw: dict[str, Any], dep, hpa=None, previous=None) -> dict[str, Any]:
    return compute_status(
        name="demo",
        namespace="ns",
        generation=4,
        spec=parse_spec({"model": {"uri": URI}, **spec_raw}),
        deployment=dep,
        hpa=hpa,
        previous=previous,
        now=NOW,
    )


def _cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_ready_when_rolled_out_and_all_ready() -> None:
    st = _status({"replicas": 2}, _dep(2))
    assert st["phase"] == "Ready"
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (2, 2, 2)
    assert st["replicaSummary"] == "2/2"
    assert st["url"] == "http://demo.ns.svc.cluster.local"
    assert st["observedGeneration"] == 4
    assert (
        st["selector"]
        == "app.kubernetes.io/instance=demo,app.kubernetes.io/name=modelservice-runtime"
    )
    ready = _cond(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "AllReplicasReady")
    assert ready["lastTransitionTime"] == NOW and ready["observedGeneration"] == 4
    assert _cond(st, "Available")["status"] == "True"
    assert _cond(st, "Progressing")["reason"] == "RolloutComplete"
    assert not any(c["type"] == "ScalingLimited" for c in st["conditions"])


def test_pending_without_deployment_or_ready_pods() -> None:
    assert _status({}, None)["phase"] == "Pending"
    st = _status({"replicas": 2}, _dep(2, ready=0, available=0))
    assert st["phase"] == "Pending"
    assert _cond(st, "Ready")["reason"] == "PodsNotReady"
    assert _cond(st, "Available")["status"] == "False"


def test_progressing_during_a_rollout() -> None:
    dep = _dep(2, replicas=3, updated=1, ready=2, available=2)
    assert not rollout_complete(dep)
    st = _status({"replicas": 2}, dep)
    assert st["phase"] == "Progressing"
    assert _cond(st, "Progressing")["status"] == "True"
    assert _cond(st, "Ready")["status"] == "False"
    assert _status({"replicas": 2}, _dep(2, gen=3, observed=2))["phase"] == "Progressing"


def test_degraded_and_failed() -> None:
    assert _status({"replicas": 3}, _dep(3, ready=2, available=3))["phase"] == "Degraded"
    stuck = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing.",
        }
    ]
    st = _status({"replicas": 2}, _dep(2, updated=1, ready=0, available=0, conditions=stuck))
    assert st["phase"] == "Failed"
    assert _cond(st, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    st = _status({"replicas": 2}, _dep(2, updated=1, ready=1, available=1, conditions=stuck))
    assert st["phase"] == "Degraded"


def test_last_transition_time_only_moves_on_flips() -> None:
    prev = _status({"replicas": 2}, _dep(2))
    later = compute_status(
        name="demo",
        namespace="ns",
        generation=5,
        spec=parse_spec({"model": {"uri": URI}, "replicas": 2}),
        deployment=_dep(2),
        hpa=None,
        previous=prev,
        now="2026-01-02T00:00:00Z",
    )
    assert _cond(later, "Ready")["lastTransitionTime"] == NOW
    flipped = compute_status(
        name="demo",
        namespace="ns",
        generation=5,
        spec=parse_spec({"model": {"uri": URI}, "replicas": 2}),
        deployment=_dep(2, ready=0, available=0),
        hpa=None,
        previous=prev,
        now="2026-01-02T00:00:00Z",
    )
    assert _cond(flipped, "Ready")["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def _hpa(current: int, desired: int, conditions=None) -> dict[str, Any]:
    return {
        "status": {
            "currentReplicas": current,
            "desiredReplicas": desired,
            "conditions": conditions or [],
        }
    }


def test_scaling_limited_at_max_and_min_from_hpa_conditions() -> None:
    auto = {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
    at_max = _hpa(
        3,
        3,
        [
            {
                "type": "ScalingLimited",
                "status": "True",
                "reason": "TooManyReplicas",
                "message": "the desired replica count is more than the maximum",
            }
        ],
    )
    st = _status(auto, _dep(3), at_max)
    lim = _cond(st, "ScalingLimited")
    assert (lim["status"], lim["reason"]) == ("True", "AtMaxReplicas")
    assert "maxReplicas 3" in lim["message"]
    assert st["desiredReplicas"] == 3
    at_min = _hpa(
        1,
        1,
        [
            {
                "type": "ScalingLimited",
                "status": "True",
                "reason": "TooFewReplicas",
                "message": "the desired replica count is less than the minimum",
            }
        ],
    )
    assert _cond(_status(auto, _dep(1), at_min), "ScalingLimited")["reason"] == "AtMinReplicas"
    within = _hpa(
        2,
        2,
        [
            {
                "type": "ScalingLimited",
                "status": "False",
                "reason": "DesiredWithinRange",
                "message": "ok",
            }
        ],
    )
    lim = _cond(_status(auto, _dep(2), within), "ScalingLimited")
    assert (lim["status"], lim["reason"]) == ("False", "DesiredWithinRange")


def test_scaling_limited_fallback_and_pending_hpa() -> None:
    auto = {"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    assert _cond(_status(auto, _dep(4), _hpa(4, 4)), "ScalingLimited")["reason"] == (
        "AtMaxReplicas"
    )
    pending = _cond(_status(auto, _dep(2), None), "ScalingLimited")
    assert (pending["status"], pending["reason"]) == ("Unknown", "HorizontalPodAutoscalerPending")


def test_replicas_ignored_while_autoscaling() -> None:
    st = _status(
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}, "replicas": 3}, _dep(2), _hpa(2, 2)
    )
    ign = _cond(st, "ReplicasIgnored")
    assert ign["reason"] == "AutoscalingEnabled"
    assert "HorizontalPodAutoscaler owns the replica count" in ign["message"]
    assert st["desiredReplicas"] == 2


def test_invalid_status_names_the_field() -> None:
    st = invalid_status(
        message="spec.runtime.env[0].name: MODELSERVICE_PORT is set by the operator",
        generation=7,
        previous=None,
        now=NOW,
    )
    assert st["phase"] == "Failed" and st["observedGeneration"] == 7
    ready = st["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert ready["message"].startswith("spec.runtime.env[0].name")
