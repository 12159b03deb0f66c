"""The operator's side of pod failures: status refreshed from the pods, one Warning per
failure (not one per pod event), and refused specs left alone.

kopf.warn and the status PATCH are replaced by recorders here: what is tested is when
reporting.py calls them. The real path (watch, event, status) runs against the control plane.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from modelservice_operator import reporting
from modelservice_operator.indexes import Children
from modelservice_operator.render import SPEC_HASH_ANNOTATION, spec_hash
from modelservice_operator.spec import parse_spec
from modelservice_operator.status import invalid_status

SPEC_RAW = {"model": {"uri": "https://h/m.onnx"}, "replicas": 1}
SHA_MISMATCH = "modelservice fetch: error: https://h/m.onnx: sha256 mismatch: expected aa, got bb"


def _owner(status: dict[str, Any] | None = None, uid: str = "uid-1") -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "demo", "namespace": "ns", "uid": uid, "generation": 1,
                     "labels": {}, "deletionTimestamp": None},
        "spec": dict(SPEC_RAW),
        "status": status if status is not None else {"observedGeneration": 1, "phase": "Pending"},
    }  # fmt: skip


def _pod(name: str, init_state: dict[str, Any], last: dict[str, Any] | None = None):
    h = spec_hash(parse_spec(SPEC_RAW, "demo"))
    return {
        "metadata": {"name": name, "annotations": {SPEC_HASH_ANNOTATION: h}},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [
                {"name": "model-fetch", "ready": False, "state": init_state,
                 "lastState": last or {}}
            ],
        },
    }  # fmt: skip


def _failing(name: str = "demo-x", message: str = SHA_MISMATCH) -> dict[str, Any]:
    return _pod(
        name,
        {"waiting": {"reason": "CrashLoopBackOff"}},
        {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
    )


def _fetching(name: str = "demo-x") -> dict[str, Any]:
    return _pod(name, {"running": {}})


LOG = logging.getLogger(__name__)
DEPLOYMENT = {
    "metadata": {"generation": 1},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
               "readyReplicas": 0, "availableReplicas": 0},
}  # fmt: skip


class StatusRecorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StatusRecorder:
    recorder = StatusRecorder()
    monkeypatch.setattr(reporting, "client", lambda: recorder)
    return recorder


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    posted: list[dict[str, Any]] = []

    def warn(obj: Any, *, reason: str, message: str) -> None:
        posted.append({"uid": obj["metadata"]["uid"], "reason": reason, "message": message})

    monkeypatch.setattr(reporting.kopf, "warn", warn)
    reporting.REPORTED.clear()
    return posted


class Owner:
    """A ModelService whose status follows what refresh_status patches, as the index's
    snapshot would once the watch brings the write back."""

    def __init__(self, api: StatusRecorder, **kw: Any) -> None:
        self.api, self.body = api, _owner(**kw)

    def refresh(self, *pods: dict[str, Any]) -> None:
        before = len(self.api.patches)
        reporting.refresh_status(self.body, Children(DEPLOYMENT, None, list(pods)), LOG)
        if len(self.api.patches) > before:
            self.body["status"] = {**self.body["status"], **self.api.patches[-1]}

    @property
    def ready(self) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == "Ready")


def test_one_warning_per_failure_however_many_pod_events(api, warnings) -> None:
    owner = Owner(api)
    owner.refresh(_fetching())
    assert owner.body["status"]["phase"] == "Progressing" and warnings == []
    for _ in range(3):  # CrashLoopBackOff, rerun, back-off again: one failure
        owner.refresh(_failing())
    assert owner.body["status"]["phase"] == "Failed"
    assert owner.ready["reason"] == "ModelFetchFailed"
    assert [(w["reason"], "sha256 mismatch" in w["message"]) for w in warnings] == [
        ("ModelFetchFailed", True)
    ]
    assert warnings[0]["message"] == owner.ready["message"]
    # Its replacement pod failing the same way is not news either.
    owner.refresh(_failing("demo-y"))
    assert len(warnings) == 1
    # Another failure is.
    owner.refresh(_failing(message="modelservice fetch: error: https://h/m.onnx: HTTP 404"))
    assert len(warnings) == 2 and "HTTP 404" in warnings[1]["message"]


def test_a_failure_that_clears_and_returns_is_reported_again(api, warnings) -> None:
    owner = Owner(api)
    owner.refresh(_failing())
    owner.refresh(_fetching())  # the user fixed the URI; the new pod fetches
    assert owner.body["status"]["phase"] == "Progressing"  # a pod-made Failed is not sticky
    owner.refresh(_failing())
    assert len(warnings) == 2


def test_a_restarted_operator_does_not_repeat_what_the_status_says(api, warnings) -> None:
    first = Owner(api)
    first.refresh(_failing())
    assert len(warnings) == 1
    reporting.REPORTED.clear()  # a new process: nothing in memory
    again = Owner(api, status=first.body["status"])
    again.refresh(_failing())
    assert len(warnings) == 1


def test_each_modelservice_is_reported_on_its_own(api, warnings) -> None:
    Owner(api, uid="uid-1").refresh(_failing())
    Owner(api, uid="uid-2").refresh(_failing())  # a re-created namesake, or another one
    assert [w["uid"] for w in warnings] == ["uid-1", "uid-2"]


def test_a_refused_spec_status_is_left_alone(api, warnings) -> None:
    refused = invalid_status(message="spec.runtime.env[0].name: reserved", generation=1,
                             previous=None)  # fmt: skip
    owner = Owner(api, status=refused)
    owner.refresh(_failing())
    assert api.patches == [] and warnings == []


def test_unschedulable_warns_but_stays_pending(api, warnings) -> None:
    pod = _pod("demo-x", {"waiting": {"reason": "PodInitializing"}})
    message = "0/2 nodes are available: 2 Insufficient cpu."
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]
    del pod["status"]["initContainerStatuses"]
    owner = Owner(api)
    owner.refresh(pod)
    assert owner.body["status"]["phase"] == "Pending"
    assert [w["reason"] for w in warnings] == ["Unschedulable"]
