"""A starting pod's last progress line in the ModelService's status (pure functions of
status.py): which container's log to read, which line of it, and the message it makes."""

from __future__ import annotations

import dataclasses

from modelservice_operator.pods import (
    PROGRESS_MAX_CHARS,
    PodDiagnosis,
    diagnose_pods,
    last_progress_line,
    progress_source,
    with_progress,
)
from modelservice_operator.reasons import Reason
from modelservice_operator.status import compute_status

from tests.unit.test_pod_status import (
    INITIALIZING,
    NOW,
    RUNNING,
    SPEC,
    _cs,
    _dep,
    _pod,
    _terminated,
)

POD = "demo-7d9f-abcde"
FETCHING = PodDiagnosis(
    Reason.FETCHING_MODEL, POD, "fetching the model (init container model-fetch)"
)
LOADING = PodDiagnosis(Reason.LOADING_MODEL, POD, "loading the model")
LINE = "fetch m.tar.gz: 1.2 GiB of 4.0 GiB (30%), 85 MiB/s, ETA 34s"


def test_the_log_to_read_is_the_fetch_while_fetching_and_the_runtime_while_loading() -> None:
    assert progress_source(FETCHING) == (POD, "model-fetch")
    assert progress_source(LOADING) == (POD, "runtime")
    failed = PodDiagnosis(Reason.MODEL_FETCH_FAILED, POD, "container model-fetch exited")
    assert progress_source(failed) is None  # its last lines are in the status already
    assert progress_source(PodDiagnosis(Reason.UNSCHEDULABLE, POD, "no node")) is None
    assert progress_source(None) is None


def test_the_last_line_is_the_last_one_printed() -> None:
    assert last_progress_line(f"fetch: starting\n{LINE}\n\n") == LINE
    # A terminal bar redrawn in place: only its last drawing.
    assert last_progress_line("m [##   ] 10%\rm [#####  ] 50%\rm [#######] 70%\r\n") == (
        "m [#######] 70%"
    )
    assert last_progress_line("") is None and last_progress_line("\n  \n") is None
    long = last_progress_line("x" * 1000)
    assert long is not None and len(long) == PROGRESS_MAX_CHARS and long.endswith("...")


def test_the_line_joins_the_message_but_not_the_failure_signature() -> None:
    d = with_progress(FETCHING, LINE)
    assert d is not None
    assert (
        d.message
        == f"pod {POD}: fetching the model (init container model-fetch); last output: {LINE}"
    )
    # A new progress line is not a new event to report.
    assert d.signature == FETCHING.signature
    assert with_progress(FETCHING, None) is FETCHING
    failed = PodDiagnosis(Reason.MODEL_FETCH_FAILED, POD, "container model-fetch exited")
    assert with_progress(failed, LINE) is failed


def test_status_of_a_fetching_pod_shows_its_last_line() -> None:
    fetching = _pod(init=_cs("model-fetch", RUNNING), runtime=_cs("runtime", INITIALIZING))
    diagnosis = with_progress(diagnose_pods([fetching], SPEC), LINE)
    st = compute_status(
        name="demo", namespace="ns", generation=1, spec=SPEC, deployment=_dep(2, 0), hpa=None,
        now=NOW, diagnosis=diagnosis,
    )  # fmt: skip
    (ready,) = [c for c in st["conditions"] if c["type"] == "Ready"]
    assert st["phase"] == "Progressing"
    assert ready["reason"] == "FetchingModel"
    assert ready["message"].endswith(f"; last output: {LINE}")
    loading = _pod(init=_cs("model-fetch", _terminated(0)),
                   runtime=_cs("runtime", RUNNING, started=False), phase="Running")  # fmt: skip
    diagnosis = with_progress(diagnose_pods([loading], SPEC), "loading /models/model")
    st = compute_status(
        name="demo", namespace="ns", generation=1, spec=SPEC, deployment=_dep(2, 0), hpa=None,
        now=NOW, diagnosis=diagnosis,
    )  # fmt: skip
    (ready,) = [c for c in st["conditions"] if c["type"] == "Ready"]
    assert (st["phase"], ready["reason"]) == ("Progressing", "LoadingModel")
    assert ready["message"].endswith("; last output: loading /models/model")


def test_the_operator_notes_starting_pods_and_forgets_them_once_started() -> None:
    """What the status computations leave for the log poller (progress.track_start): a
    ModelService with a fetching pod is noted with its pod and container, and its stored
    line shows in every later diagnosis; once no pod is starting, it is dropped."""
    from modelservice_operator import progress
    from modelservice_operator.memory import owner_key

    meta = {"namespace": "ns", "name": "demo", "uid": "u1"}
    owner, key = {"metadata": meta, "spec": {}, "status": {}}, owner_key(meta)
    progress.track_start(owner, None, None, [], FETCHING)
    start = progress.STARTING.get(key)
    assert start is not None and start.source == (POD, "model-fetch")
    progress.STARTING.put(key, dataclasses.replace(start, line=LINE))
    shown = progress.with_known_progress(meta, FETCHING)
    assert shown is not None and shown.detail.endswith(f"; last output: {LINE}")
    progress.track_start(owner, None, None, [], FETCHING)  # the next event keeps the line
    assert progress.with_known_progress(meta, FETCHING) == shown
    # The same pod now loading: the fetch's line is not the runtime's.
    progress.track_start(owner, None, None, [], LOADING)
    assert progress.with_known_progress(meta, LOADING) == LOADING
    progress.track_start(owner, None, None, [], None)
    assert key not in progress.STARTING
