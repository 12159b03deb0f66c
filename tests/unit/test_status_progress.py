"""A starting pod's last progress line in the ModelService's status (pure functions of
status.py): which container's log to read, which line of it, and the message it makes."""

from __future__ import annotations

from modelservice_operator.status import (
    PROGRESS_MAX_CHARS,
    PodDiagnosis,
    Reason,
    compute_status,
    diagnose_pods,
    last_progress_line,
    progress_source,
    with_progress,
)

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
    """What the status computations leave for the log poller (handlers._track_start): a
    ModelService with a fetching pod is noted with its pod and container, and its stored
    line shows in every later diagnosis; once no pod is starting, both are dropped."""
    from modelservice_operator import handlers

    owner = {"metadata": {"namespace": "ns", "name": "demo"}, "spec": {}, "status": {}}
    handlers._track_start(owner, None, None, [], FETCHING)
    assert handlers._starting[("ns", "demo")].source == (POD, "model-fetch")
    handlers._progress[("ns", "demo", POD, "model-fetch")] = LINE
    shown = handlers._with_known_progress("ns", "demo", FETCHING)
    assert shown is not None and shown.detail.endswith(f"; last output: {LINE}")
    # The same pod now loading: the fetch's line is not the runtime's.
    handlers._track_start(owner, None, None, [], LOADING)
    assert handlers._with_known_progress("ns", "demo", LOADING) == LOADING
    handlers._track_start(owner, None, None, [], None)
    assert ("ns", "demo") not in handlers._starting
    assert not [k for k in handlers._progress if k[:2] == ("ns", "demo")]
