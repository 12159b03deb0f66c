"""Why a ModelService's runtime pods are not ready, read from their container statuses.

The Deployment only counts pods; why they are not ready is in the pods' container
statuses, so `diagnose_pods` reads those (the init container's or runtime's last log
lines arrive there through terminationMessagePolicy FallbackToLogsOnError, render.py).
`pod_essentials` is the part of a pod this reads (what the operator's pod index keeps), and
the last progress line of a pod still on its way comes from its log (progress.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modelservice_operator.reasons import FAILURE_REASONS, Reason
from modelservice_operator.render import (
    FETCH_CONTAINER,
    PRIMARY,
    REVISION_LABEL,
    RUNTIME_CONTAINER,
    SPEC_HASH_ANNOTATION,
    spec_hash,
)
from modelservice_operator.spec import ModelServiceSpec

# --- why the pods are not ready ---------------------------------------------------------

# Waiting reasons with which kubelet gives up on starting a container until something
# changes (the image, a missing Secret or ConfigMap, the command).
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull"})  # fmt: skip
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                            "RunContainerError"})  # fmt: skip
# A termination message in a status condition: the last lines (the error is printed
# last), at most this much of them. kubelet itself keeps 80 lines / 2 KiB.
MESSAGE_MAX_LINES = 5
MESSAGE_MAX_CHARS = 1024
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
)


def tail(text: str, max_lines: int = MESSAGE_MAX_LINES, max_chars: int = MESSAGE_MAX_CHARS) -> str:
    """The last non-empty lines of a container's output, cut to `max_chars` from the end
    (a log's last lines say why it failed; the first ones are progress)."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    out = "\n".join(lines[-max_lines:])
    if len(out) > max_chars:
        out = "..." + out[-(max_chars - 3) :]
    return out


@dataclass(frozen=True)
class PodDiagnosis:
    """Why one runtime pod is not ready: a reason for the Ready condition and the detail."""

    reason: Reason
    pod: str
    detail: str  # without the pod's name: the same failure in a replacement pod reads alike
    # What stays the same while the failure does, when `detail` does not (kubelet flips an
    # image pull between ErrImagePull and ImagePullBackOff, each with its own message).
    identity: str | None = None

    @property
    def failed(self) -> bool:
        return self.reason in FAILURE_REASONS

    @property
    def message(self) -> str:
        return f"pod {self.pod}: {self.detail}"

    @property
    def signature(self) -> tuple[str, str]:
        """What makes two reports the same failure: the reason and the detail without
        timestamps (the runtime's log lines carry them), so that a pod failing again
        the same way, or its replacement, is not news."""
        return self.reason.value, _TIMESTAMP.sub("<time>", self.identity or self.detail)


# Most urgent first: a failure needs a person; an unscheduled pod may wait for a node;
# the pod furthest from ready tells best how long the wait will be.
_RANK = {
    **dict.fromkeys(FAILURE_REASONS, 0),
    Reason.UNSCHEDULABLE: 1,
    Reason.FETCHING_MODEL: 2,
    Reason.LOADING_MODEL: 3,
}


def _how_it_ended(term: Mapping[str, Any]) -> str:
    code, why = term.get("exitCode"), term.get("reason")
    if why == "OOMKilled":
        return f"was killed for running out of memory (OOMKilled, exit code {code})"
    return f"exited with code {code}" + (f" ({why})" if why and why != "Error" else "")


def _terminated_failure(name: str, cs: Mapping[str, Any]) -> str | None:
    """The detail of a container that failed, now or in its last run (kubelet is
    restarting it, and it will most likely fail the same way again), or None."""
    state, last = cs.get("state") or {}, cs.get("lastState") or {}
    term, previous = state.get("terminated"), ""
    if term is not None:
        if term.get("exitCode", 0) == 0:
            return None  # finished (an init container), whatever failed before that
    elif cs.get("ready"):
        return None  # restarted and recovered
    else:
        term, previous = last.get("terminated"), " --previous"
        if term is None or term.get("exitCode", 0) == 0:
            return None
    output = tail(str(term.get("message") or ""))
    if not output:
        output = f"no output (kubectl logs -c {name}{previous})"
    return f"container {name} {_how_it_ended(term)}: {output}"


def _waiting(cs: Mapping[str, Any]) -> tuple[str, str]:
    waiting = (cs.get("state") or {}).get("waiting") or {}
    return str(waiting.get("reason") or ""), str(waiting.get("message") or "")


def diagnose_pod(pod: Mapping[str, Any]) -> PodDiagnosis | None:
    """What keeps one pod from being ready, when its status says so clearly; None for a
    pod that is ready, going away, or between steps (being created, initializing)."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    name = str(meta.get("name") or "")
    if meta.get("deletionTimestamp") or st.get("phase") in ("Succeeded", "Failed"):
        return None  # the ReplicaSet replaces it; its end is no news
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") == "Unschedulable":
                detail = str(cond.get("message") or "no node fits the pod")
                return PodDiagnosis(Reason.UNSCHEDULABLE, name, f"unschedulable: {detail}")
            return None
    inits = list(st.get("initContainerStatuses") or [])
    mains = list(st.get("containerStatuses") or [])
    for cs in inits + mains:
        reason, message = _waiting(cs)
        what = f"container {cs.get('name')}: {reason}" + (f": {message}" if message else "")
        if reason in IMAGE_PULL_REASONS:
            image = f"container {cs.get('name')} image {cs.get('image')}"
            return PodDiagnosis(Reason.IMAGE_PULL_FAILED, name, what, identity=image)
        if reason in CONFIG_REASONS:
            return PodDiagnosis(Reason.CONTAINER_CONFIG_FAILED, name, what)
    for cs in inits:
        if cs.get("name") != FETCH_CONTAINER:
            continue  # another's init container (a mesh's): not ours to explain
        failure = _terminated_failure(FETCH_CONTAINER, cs)
        if failure is not None:
            return PodDiagnosis(Reason.MODEL_FETCH_FAILED, name, failure)
        if "running" in (cs.get("state") or {}):
            return PodDiagnosis(
                Reason.FETCHING_MODEL,
                name,
                f"fetching the model (init container {FETCH_CONTAINER})",
            )
    for cs in mains:
        if cs.get("name") != RUNTIME_CONTAINER:
            continue
        failure = _terminated_failure(RUNTIME_CONTAINER, cs)
        if failure is not None:
            return PodDiagnosis(Reason.RUNTIME_FAILED, name, failure)
        running = "running" in (cs.get("state") or {})
        if running and not cs.get("ready") and not cs.get("started"):
            return PodDiagnosis(
                Reason.LOADING_MODEL,
                name,
                "loading the model (the runtime has not passed its startup probe yet)",
            )
    return None


def diagnose_pods(
    pods: Iterable[Mapping[str, Any]], spec: ModelServiceSpec | None = None
) -> PodDiagnosis | None:
    """The most urgent thing keeping the ModelService's pods from being ready, or None.

    With `spec`, pods of an older pod template (another spec hash) are left out: during a
    rollout the Deployment is replacing them, and what stops the new ones is the news.
    Ties go to the first pod by name, so the report does not hop between replicas.
    """
    want = spec_hash(spec) if spec is not None else None
    found: list[PodDiagnosis] = []
    for pod in pods:
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        have = annotations.get(SPEC_HASH_ANNOTATION)
        if want is not None and have is not None and have != want:
            continue
        diagnosis = diagnose_pod(pod)
        if diagnosis is not None:
            found.append(diagnosis)
    return min(found, key=lambda d: (_RANK[d.reason], d.pod), default=None)


# --- pods on their way to Ready, which a scale-down must not take ----------------------


def loading(pod: Mapping[str, Any]) -> bool:
    """On its way to its first Ready: scheduled, not going away, not failed, and its runtime
    not yet past its startup probe (fetching the model, loading it, or between those
    steps). A pod that is not scheduled, or failed, is not: a scale-down may well take it."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or st.get("phase") not in ("Pending", "Running"):
        return False
    scheduled = any(
        c.get("type") == "PodScheduled" and c.get("status") == "True"
        for c in st.get("conditions") or []
    )
    runtime = next(
        (cs for cs in st.get("containerStatuses") or [] if cs.get("name") == RUNTIME_CONTAINER),
        {},
    )
    if not scheduled or runtime.get("started") or runtime.get("ready"):
        return False
    diagnosis = diagnose_pod(pod)
    return diagnosis is None or diagnosis.reason in (Reason.FETCHING_MODEL, Reason.LOADING_MODEL)


def first_loading(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The name of the first primary pod (by name) that is `loading`, or None: the HPA's
    scale-down is held while there is one (render.hold_scale_down). A canary's pods have no
    HPA, so they do not count."""
    names = [
        str((pod.get("metadata") or {}).get("name"))
        for pod in pods
        if ((pod.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL, PRIMARY) == PRIMARY
        and loading(pod)
    ]
    return min(names, default=None)


# --- the last progress line of a pod still on its way ----------------------------------

# How many log lines are read for it (the last non-empty one is shown), and its length.
PROGRESS_LOG_LINES = 3
PROGRESS_MAX_CHARS = 240


def progress_source(diagnosis: PodDiagnosis | None) -> tuple[str, str] | None:
    """(pod, container) whose log tells how far a starting pod is: the model-fetch init
    container while it fetches (its progress lines), the runtime while it loads; None
    when the diagnosis is no such wait."""
    if diagnosis is None:
        return None
    if diagnosis.reason is Reason.FETCHING_MODEL:
        return diagnosis.pod, FETCH_CONTAINER
    if diagnosis.reason is Reason.LOADING_MODEL:
        return diagnosis.pod, RUNTIME_CONTAINER
    return None


def last_progress_line(log: str) -> str | None:
    """The last thing a container printed, as one line: the last non-empty line (of a
    bar redrawn with carriage returns, its last drawing: splitlines splits at \\r too)."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line:
            if len(line) > PROGRESS_MAX_CHARS:
                line = line[: PROGRESS_MAX_CHARS - 3] + "..."
            return line
    return None


def with_progress(diagnosis: PodDiagnosis | None, line: str | None) -> PodDiagnosis | None:
    """The diagnosis with the pod's last progress line in its detail. Its identity stays
    the detail without the line, so a new line is never a new failure to report."""
    if diagnosis is None or line is None or progress_source(diagnosis) is None:
        return diagnosis
    return PodDiagnosis(
        diagnosis.reason,
        diagnosis.pod,
        f"{diagnosis.detail}; last output: {line}",
        identity=diagnosis.identity or diagnosis.detail,
    )


def pod_essentials(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod that `diagnose_pod` reads, with output already cut to size: what
    the operator keeps in memory per pod (its watch index) instead of whole pods."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}

    def container(cs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: cs[k] for k in ("name", "image", "ready", "started") if k in cs}
        for key in ("state", "lastState"):
            state = {}
            for kind, detail in (cs.get(key) or {}).items():
                detail = dict(detail or {})
                if "message" in detail:
                    detail["message"] = tail(str(detail["message"]))
                detail.pop("containerID", None)
                state[kind] = detail
            out[key] = state
        return out

    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "annotations": {k: v for k, v in annotations.items() if k == SPEC_HASH_ANNOTATION},
            "labels": {k: v for k, v in labels.items() if k == REVISION_LABEL},
        },
        "status": {
            "phase": st.get("phase"),
            "conditions": [
                {k: c.get(k) for k in ("type", "status", "reason", "message") if k in c}
                for c in st.get("conditions") or []
                if c.get("type") == "PodScheduled"
            ],
            "initContainerStatuses": [container(c) for c in st.get("initContainerStatuses") or []],
            "containerStatuses": [container(c) for c in st.get("containerStatuses") or []],
        },
    }
