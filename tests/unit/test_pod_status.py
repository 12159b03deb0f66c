"""Why a ModelService is not ready, read from its pods (pure functions of status.py).

The pod statuses here are shaped as kubelet writes them; a failed container's
`terminated.message` holds its last log lines because the containers are rendered with
terminationMessagePolicy FallbackToLogsOnError.
"""

from __future__ import annotations

from typing import Any

import pytest
from modelservice_operator.pods import (
    MESSAGE_MAX_CHARS,
    PodDiagnosis,
    diagnose_pod,
    diagnose_pods,
    first_loading,
    loading,
    pod_essentials,
    tail,
)
from modelservice_operator.reasons import Reason
from modelservice_operator.render import PRIMARY, REVISION_LABEL, SPEC_HASH_ANNOTATION, spec_hash
from modelservice_operator.spec import parse_spec
from modelservice_operator.status import compute_status, invalid_status, refused

URI = "https://models.example.com/m.onnx"
SPEC = parse_spec({"model": {"uri": URI, "sha256": "ab" * 32}, "replicas": 2}, "demo")
NOW = "2026-01-01T00:00:00Z"
SHA_MISMATCH = (
    f"modelservice fetch: error: {URI}: sha256 mismatch: expected {'ab' * 32}, "
    f"got {'cd' * 32}; /models/model.onnx was not written"
)
UNREACHABLE = (
    f"fetch {URI}: attempt 1/3 failed (cannot connect: [Errno 101] Network is unreachable);"
    " retrying in 1s\n"
    f"fetch {URI}: attempt 2/3 failed (cannot connect: [Errno 101] Network is unreachable);"
    " retrying in 2s\n"
    f"modelservice fetch: error: {URI}: giving up after 3 attempt(s): cannot connect: "
    "[Errno 101] Network is unreachable\n"
)


def _terminated(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
    }
    if message:
        term["message"] = message
    return {"terminated": {**term, "containerID": "containerd://0123", "startedAt": NOW}}


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


RUNNING = {"running": {"startedAt": NOW}}
INITIALIZING = _waiting("PodInitializing")


def _cs(name: str, state: dict[str, Any], last: dict[str, Any] | None = None, **kw: Any):
    return {
        "name": name,
        "image": "modelservice-runtime:0.1.0",
        "ready": False,
        "restartCount": 0 if last is None else 3,
        "state": state,
        "lastState": last or {},
        **kw,
    }


def _pod(
    name: str = "demo-7d9f-abcde",
    init: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    *,
    phase: str = "Pending",
    scheduled: dict[str, Any] | None = None,
    spec_hash_value: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "labels": {"app.kubernetes.io/instance": "demo"},
        "annotations": {SPEC_HASH_ANNOTATION: spec_hash_value or spec_hash(SPEC), "other": "x"},
    }
    if deleting:
        meta["deletionTimestamp"] = NOW
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [scheduled or {"type": "PodScheduled", "status": "True"}],
        "hostIP": "10.0.0.1",
    }
    if init is not None:
        status["initContainerStatuses"] = [init]
    if runtime is not None:
        status["containerStatuses"] = [runtime]
    return {"metadata": meta, "spec": {"containers": []}, "status": status}


def _fetch_failed_pod(message: str = SHA_MISMATCH, **kw: Any) -> dict[str, Any]:
    return _pod(
        init=_cs("model-fetch", _waiting("CrashLoopBackOff", "back-off 40s restarting"),
                 _terminated(1, message)),
        runtime=_cs("runtime", INITIALIZING),
        **kw,
    )  # fmt: skip


def _dep(want: int, ready: int, *, updated: int | None = None, conditions=None):
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": want},
        "status": {
            "observedGeneration": 1,
            "replicas": want,
            "updatedReplicas": want if updated is None else updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conditions or [],
        },
    }


def _status(dep: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    return compute_status(
        name="demo", namespace="ns", generation=1, spec=SPEC, deployment=dep, hpa=None,
        now=NOW, diagnosis=diagnose_pods(pods, SPEC),
    )  # fmt: skip


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --- the failures the issue names --------------------------------------------------------


def test_sha256_mismatch_fails_the_modelservice_with_the_fetch_message() -> None:
    pod = _pod(init=_cs("model-fetch", _terminated(1, SHA_MISMATCH)),
               runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.MODEL_FETCH_FAILED and d.failed
    assert d.pod == "demo-7d9f-abcde"
    assert d.detail == f"container model-fetch exited with code 1: {SHA_MISMATCH}"

    st = _status(_dep(2, 0), [pod])
    assert st["phase"] == "Failed"
    ready = _ready(st)
    assert (ready["status"], ready["reason"]) == ("False", "ModelFetchFailed")
    assert ready["message"].startswith("0/2 replicas ready: pod demo-7d9f-abcde: container ")
    assert "sha256 mismatch" in ready["message"]


def test_a_fetch_kubelet_keeps_retrying_stays_a_failure() -> None:
    # Between retries (CrashLoopBackOff) and while the next try runs, the last run's
    # failure is what there is to say: no flapping back to "fetching".
    back_off = _fetch_failed_pod(UNREACHABLE)
    rerun = _pod(init=_cs("model-fetch", RUNNING, _terminated(1, UNREACHABLE)),
                 runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    for pod in (back_off, rerun):
        d = diagnose_pod(pod)
        assert d is not None and d.reason is Reason.MODEL_FETCH_FAILED
        assert d.detail.endswith("giving up after 3 attempt(s): cannot connect: "
                                 "[Errno 101] Network is unreachable")  # fmt: skip
        assert "back-off" not in d.detail  # kubelet's back-off grows: not part of the news
    assert diagnose_pod(back_off).signature == diagnose_pod(rerun).signature  # type: ignore[union-attr]


def test_a_fetch_that_succeeds_on_a_retry_is_no_longer_a_failure() -> None:
    pod = _pod(init=_cs("model-fetch", _terminated(0), _terminated(1, UNREACHABLE)),
               runtime=_cs("runtime", RUNNING, started=False))  # fmt: skip
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.LOADING_MODEL


def test_corrupt_model_in_the_runtime_is_reported_from_its_log() -> None:
    log = (
        "2026-01-01 00:00:01,123 INFO 1 modelservice: loading /mnt/model-pvc/m.onnx\n"
        "2026-01-01 00:00:01,456 ERROR 1 modelservice: /mnt/model-pvc/m.onnx is not a "
        "loadable ONNX model: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF\n"
    )
    pod = _pod(init=_cs("model-fetch", _terminated(0)),
               runtime=_cs("runtime", _waiting("CrashLoopBackOff"), _terminated(1, log)),
               phase="Running")  # fmt: skip
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.RUNTIME_FAILED
    assert "INVALID_PROTOBUF" in d.detail and "container runtime exited with code 1" in d.detail
    # The next crash logs other timestamps; it is the same failure.
    later = _pod(init=_cs("model-fetch", _terminated(0)),
                 runtime=_cs("runtime", _waiting("CrashLoopBackOff"),
                             _terminated(1, log.replace("00:00:01", "00:05:09"))),
                 phase="Running", name="demo-7d9f-fghij")  # fmt: skip
    assert diagnose_pod(later).signature == d.signature  # type: ignore[union-attr]
    st = _status(_dep(2, 0), [pod])
    assert st["phase"] == "Failed" and _ready(st)["reason"] == "RuntimeFailed"


def test_oom_killed_runtime_says_so_and_empty_output_points_at_the_log() -> None:
    oom = _terminated(137, "", "OOMKilled")
    pod = _pod(runtime=_cs("runtime", _waiting("CrashLoopBackOff"), oom), phase="Running")
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.RUNTIME_FAILED
    assert d.detail == (
        "container runtime was killed for running out of memory (OOMKilled, exit code 137): "
        "no output (kubectl logs -c runtime --previous)"
    )


def test_a_runtime_that_restarted_and_is_ready_again_is_fine() -> None:
    pod = _pod(runtime=_cs("runtime", RUNNING, _terminated(137, "", "OOMKilled"),
                           ready=True, started=True), phase="Running")  # fmt: skip
    assert diagnose_pod(pod) is None


def test_image_pull_errors_give_the_kubelets_message_and_one_signature() -> None:
    pull = _pod(init=_cs("model-fetch", _waiting(
        "ErrImagePull",
        'failed to pull and unpack image "docker.io/library/modelservice-runtime:0.1.0": not found',
    )), runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    back_off = _pod(init=_cs("model-fetch", _waiting(
        "ImagePullBackOff", 'Back-off pulling image "modelservice-runtime:0.1.0"'
    )), runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    a, b = diagnose_pod(pull), diagnose_pod(back_off)
    assert a is not None and b is not None
    assert a.reason is b.reason is Reason.IMAGE_PULL_FAILED
    assert a.detail.startswith("container model-fetch: ErrImagePull: failed to pull")
    assert a.signature == b.signature  # kubelet alternates the two while it retries
    invalid = _pod(runtime=_cs("runtime", _waiting("InvalidImageName", "bad ref")))
    assert diagnose_pod(invalid).reason is Reason.IMAGE_PULL_FAILED  # type: ignore[union-attr]
    assert _status(_dep(2, 0), [pull])["phase"] == "Failed"


def test_missing_secret_is_a_container_config_failure() -> None:
    pod = _pod(init=_cs("model-fetch", _waiting(
        "CreateContainerConfigError", 'secret "creds" not found'
    )), runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.CONTAINER_CONFIG_FAILED and d.failed
    assert d.detail == 'container model-fetch: CreateContainerConfigError: secret "creds" not found'


# --- still on its way ----------------------------------------------------------------------


def test_unschedulable_is_pending_with_the_schedulers_message() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pod = _pod(scheduled={"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "message": message})  # fmt: skip
    d = diagnose_pod(pod)
    assert d is not None and d.reason is Reason.UNSCHEDULABLE and not d.failed
    st = _status(_dep(2, 0), [pod])
    assert st["phase"] == "Pending"
    assert _ready(st)["reason"] == "Unschedulable"
    assert (
        _ready(st)["message"]
        == f"0/2 replicas ready: pod demo-7d9f-abcde: unschedulable: {message}"
    )


def test_fetching_and_loading_are_progressing() -> None:
    fetching = _pod(init=_cs("model-fetch", RUNNING), runtime=_cs("runtime", INITIALIZING))
    st = _status(_dep(2, 0), [fetching])
    assert (st["phase"], _ready(st)["reason"]) == ("Progressing", "FetchingModel")
    loading = _pod(init=_cs("model-fetch", _terminated(0)),
                   runtime=_cs("runtime", RUNNING, started=False), phase="Running")  # fmt: skip
    st = _status(_dep(2, 0), [loading])
    assert (st["phase"], _ready(st)["reason"]) == ("Progressing", "LoadingModel")
    assert "loading the model" in _ready(st)["message"]
    # Started (past its startup probe) but failing readiness: not "loading" any more.
    serving = _pod(init=_cs("model-fetch", _terminated(0)),
                   runtime=_cs("runtime", RUNNING, started=True), phase="Running")  # fmt: skip
    assert diagnose_pod(serving) is None
    # Being created: nothing precise to say yet; the general message stays.
    creating = _pod(init=_cs("model-fetch", _waiting("PodInitializing")),
                    runtime=_cs("runtime", INITIALIZING))  # fmt: skip
    assert diagnose_pod(creating) is None
    st = _status(_dep(2, 0), [creating])
    assert (st["phase"], _ready(st)["reason"]) == ("Pending", "PodsNotReady")


# --- several pods, rollouts ------------------------------------------------------------------


def test_the_most_urgent_pod_speaks_and_ties_go_by_name() -> None:
    fetching = _pod("demo-a", init=_cs("model-fetch", RUNNING))
    failed_b = _fetch_failed_pod(name="demo-b")
    failed_c = _fetch_failed_pod(UNREACHABLE, name="demo-c")
    d = diagnose_pods([failed_c, fetching, failed_b])
    assert d is not None and (d.reason, d.pod) == (Reason.MODEL_FETCH_FAILED, "demo-b")
    assert diagnose_pods([]) is None


def test_terminating_and_old_template_pods_are_left_out() -> None:
    deleting = _fetch_failed_pod(deleting=True)
    old = _fetch_failed_pod(spec_hash_value="0" * 16)
    evicted = {
        **_fetch_failed_pod(),
        "status": {**_fetch_failed_pod()["status"], "phase": "Failed"},
    }
    assert diagnose_pods([deleting, old, evicted], SPEC) is None
    assert diagnose_pods([old]) is not None  # without a spec every pod counts


def test_some_replicas_serving_and_a_new_pod_failing_is_degraded() -> None:
    st = _status(_dep(2, 1, updated=1), [_fetch_failed_pod()])
    assert st["phase"] == "Degraded"
    assert _ready(st)["reason"] == "ModelFetchFailed"
    assert _ready(st)["message"].startswith("1/2 replicas ready: pod ")
    # A pod on its way during a rollout adds to the message; the reason stays RollingOut.
    st = _status(_dep(2, 1, updated=1), [_pod(init=_cs("model-fetch", RUNNING))])
    assert (st["phase"], _ready(st)["reason"]) == ("Progressing", "RollingOut")
    assert _ready(st)["message"].endswith("rolling out; pod demo-7d9f-abcde: fetching the model "
                                          "(init container model-fetch)")  # fmt: skip


def test_the_pods_reason_wins_over_progress_deadline_exceeded() -> None:
    stuck = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
              "message": 'ReplicaSet "demo-7d9f" has timed out progressing.'}]  # fmt: skip
    st = _status(_dep(2, 0, conditions=stuck), [_fetch_failed_pod()])
    assert st["phase"] == "Failed" and _ready(st)["reason"] == "ModelFetchFailed"
    progressing = next(c for c in st["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "ProgressDeadlineExceeded"


def test_ready_is_ready_whatever_a_leftover_pod_says() -> None:
    st = _status(_dep(2, 2), [_fetch_failed_pod()])
    assert st["phase"] == "Ready" and _ready(st)["reason"] == "AllReplicasReady"


# --- sizes, memory, refused specs ------------------------------------------------------------


def test_tail_keeps_the_last_lines_within_a_kib() -> None:
    log = "\n".join(f"line {i}" for i in range(100)) + "\n\n"
    assert tail(log) == "\n".join(f"line {i}" for i in range(95, 100))
    long = "x" * 5000 + "\nthe error"
    cut = tail(long)
    assert len(cut) == MESSAGE_MAX_CHARS and cut.startswith("...") and cut.endswith("the error")
    assert tail("") == ""


def test_pod_essentials_keep_what_the_diagnosis_needs_and_cut_output() -> None:
    big = "progress\n" * 300 + SHA_MISMATCH
    pod = _fetch_failed_pod(big)
    kept = pod_essentials(pod)
    assert diagnose_pod(kept) == diagnose_pod(pod)
    assert "spec" not in kept and "hostIP" not in kept["status"]
    assert kept["metadata"]["annotations"] == {SPEC_HASH_ANNOTATION: spec_hash(SPEC)}
    init = kept["status"]["initContainerStatuses"][0]
    assert "containerID" not in init["lastState"]["terminated"]
    assert len(init["lastState"]["terminated"]["message"]) <= MESSAGE_MAX_CHARS
    assert diagnose_pod(pod_essentials(_pod(init=_cs("model-fetch", RUNNING)))) == PodDiagnosis(
        Reason.FETCHING_MODEL, "demo-7d9f-abcde", "fetching the model (init container model-fetch)"
    )


STARTED = {"ready": False, "started": True}


@pytest.mark.parametrize(
    ("pod", "is_loading"),
    [
        # On its way: scheduled and initializing, fetching, or the runtime not started yet.
        (_pod(), True),
        (_pod(init=_cs("model-fetch", RUNNING), runtime=_cs("runtime", INITIALIZING)), True),
        (_pod(runtime=_cs("runtime", RUNNING, started=False), phase="Running"), True),
        # Not: unscheduled, going away, failed, started (a probe failing later), Ready.
        (_pod(scheduled={"type": "PodScheduled", "status": "False",
                         "reason": "Unschedulable", "message": "0/3 nodes"}), False),
        (_pod(scheduled={"type": "Initialized", "status": "True"}), False),
        (_pod(runtime=_cs("runtime", RUNNING), phase="Running", deleting=True), False),
        (_fetch_failed_pod(), False),
        (_pod(runtime=_cs("runtime", _waiting("CrashLoopBackOff"), _terminated(1, "boom")),
              phase="Running"), False),
        (_pod(runtime=_cs("runtime", RUNNING, **STARTED), phase="Running"), False),
        (_pod(runtime=_cs("runtime", RUNNING, ready=True, started=True), phase="Running"), False),
        (_pod(runtime=_cs("runtime", _terminated(0)), phase="Succeeded"), False),
    ],
)  # fmt: skip
def test_a_pod_is_loading_only_on_its_way_to_its_first_ready(pod, is_loading) -> None:
    assert loading(pod) is is_loading
    assert loading(pod_essentials(pod)) is is_loading  # the pods index keeps enough


def test_the_first_loading_pod_is_a_primary_one_by_name() -> None:
    ready = _pod("demo-a", runtime=_cs("runtime", RUNNING, ready=True, started=True),
                 phase="Running")  # fmt: skip
    canary = _pod("demo-b")
    canary["metadata"]["labels"][REVISION_LABEL] = "canary"
    primaries = [_pod("demo-d"), _pod("demo-c")]
    for pod in primaries:
        pod["metadata"]["labels"][REVISION_LABEL] = PRIMARY
    pods = [pod_essentials(p) for p in (ready, canary, *primaries)]
    assert first_loading(pods) == "demo-c"
    assert first_loading(pods[:2]) is None  # a canary's pods have no HPA
    assert first_loading([]) is None


def test_refused_tells_an_invalid_spec_status_from_a_pod_failure() -> None:
    assert refused(invalid_status(message="spec.x: bad", generation=1, previous=None))
    assert not refused(_status(_dep(2, 0), [_fetch_failed_pod()]))
    assert not refused(None)
