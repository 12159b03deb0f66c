"""compute_status's named decisions one by one (status.py): what the children's numbers
are (observe, desired_replicas), the phase and the Ready reason (ready_verdict, each branch
in its order of precedence), and the Progressing and ReplicasIgnored conditions."""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator.pods import PodDiagnosis
from modelservice_operator.reasons import Phase, Reason
from modelservice_operator.spec import parse_spec
from modelservice_operator.status import (
    Observed,
    desired_replicas,
    observe,
    progressing_condition,
    ready_verdict,
    replicas_ignored_condition,
)

from tests.unit.test_render_status import URI, _dep

FIXED = parse_spec({"model": {"uri": URI}, "replicas": 3})
SCALED = parse_spec({
    "model": {"uri": URI}, "resources": {"requests": {"cpu": "1"}},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
})  # fmt: skip
FETCH_FAILED = PodDiagnosis(Reason.MODEL_FETCH_FAILED, "p-1", "container model-fetch exited 1")
FETCHING = PodDiagnosis(Reason.FETCHING_MODEL, "p-1", "fetching the model")
UNSCHEDULABLE = PodDiagnosis(Reason.UNSCHEDULABLE, "p-1", "unschedulable: no node")


def _seen(**kw: Any) -> Observed:
    base: dict[str, Any] = {
        "deployment_exists": True, "current": 2, "ready": 2, "updated": 2, "desired": 2,
        "complete": True, "progressing": {},
    }  # fmt: skip
    return Observed(**(base | kw))


def test_desired_replicas_fixed_or_the_hpas_then_the_deployments_then_the_minimum() -> None:
    assert desired_replicas(FIXED, _dep(1), {"status": {"desiredReplicas": 9}}) == 3
    assert desired_replicas(SCALED, _dep(4), {"status": {"desiredReplicas": 5}}) == 5
    assert desired_replicas(SCALED, _dep(4), None) == 4
    assert desired_replicas(SCALED, None, None) == 2


def test_observe_reads_counts_and_the_rollout() -> None:
    stuck = {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "slow"}
    seen = observe(FIXED, _dep(3, ready=1, updated=2, conditions=[stuck]), None)
    assert (seen.current, seen.ready, seen.updated, seen.desired) == (3, 1, 2, 3)
    assert seen.stuck and not seen.complete and not seen.serving
    assert seen.counts == "1/3 replicas ready"
    assert not observe(FIXED, None, None).deployment_exists


@pytest.mark.parametrize(
    ("seen", "diagnosis", "phase", "reason"),
    [
        (_seen(deployment_exists=False), FETCH_FAILED, Phase.PENDING, Reason.DEPLOYMENT_MISSING),
        # A pod failure comes before the deadline, and is Failed only with nothing ready.
        (_seen(ready=0, complete=False, progressing={"reason": "ProgressDeadlineExceeded"}),
         FETCH_FAILED, Phase.FAILED, Reason.MODEL_FETCH_FAILED),
        (_seen(ready=1, complete=False), FETCH_FAILED, Phase.DEGRADED, Reason.MODEL_FETCH_FAILED),
        # Serving every desired replica: an old pod's failure is no failure.
        (_seen(), FETCH_FAILED, Phase.READY, Reason.ALL_REPLICAS_READY),
        (_seen(ready=0, complete=False, progressing={"reason": "ProgressDeadlineExceeded"}),
         None, Phase.FAILED, Reason.PROGRESS_DEADLINE_EXCEEDED),
        (_seen(desired=0, ready=0, current=0), None, Phase.PENDING, Reason.SCALED_TO_ZERO),
        (_seen(ready=0, complete=False), FETCHING, Phase.PROGRESSING, Reason.FETCHING_MODEL),
        (_seen(ready=0, complete=False), UNSCHEDULABLE, Phase.PENDING, Reason.UNSCHEDULABLE),
        (_seen(ready=0, complete=False), None, Phase.PENDING, Reason.PODS_NOT_READY),
        (_seen(ready=1, complete=False), FETCHING, Phase.PROGRESSING, Reason.ROLLING_OUT),
        (_seen(ready=1), None, Phase.DEGRADED, Reason.REPLICAS_UNAVAILABLE),
    ],
)  # fmt: skip
def test_ready_verdict_in_order_of_precedence(
    seen: Observed, diagnosis: PodDiagnosis | None, phase: Phase, reason: Reason
) -> None:
    verdict = ready_verdict(seen, diagnosis)
    assert (verdict.phase, verdict.reason) == (phase, reason)
    if diagnosis is not None and reason is diagnosis.reason:
        assert verdict.message == f"{seen.counts}: {diagnosis.message}"


def test_progressing_says_stuck_rolled_out_or_how_far() -> None:
    stuck = progressing_condition(_seen(progressing={"reason": "ProgressDeadlineExceeded",
                                                     "message": "too slow"}))  # fmt: skip
    assert (stuck["status"], stuck["reason"], stuck["message"]) == (
        "False", "ProgressDeadlineExceeded", "too slow",
    )  # fmt: skip
    assert progressing_condition(_seen())["reason"] == "RolloutComplete"
    rolling = progressing_condition(_seen(complete=False, updated=1, desired=3))
    assert (rolling["status"], rolling["message"]) == ("True", "1/3 pods updated")


def test_replicas_ignored_only_beside_autoscaling() -> None:
    assert replicas_ignored_condition(FIXED) is None
    assert replicas_ignored_condition(SCALED) is None
    both = parse_spec({
        "model": {"uri": URI}, "replicas": 3, "resources": {"requests": {"cpu": "1"}},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6},
    })  # fmt: skip
    condition = replicas_ignored_condition(both)
    assert condition is not None and condition["reason"] == "AutoscalingEnabled"
    assert "(2..6)" in condition["message"]
