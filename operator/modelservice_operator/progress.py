"""The last log line of a starting pod, for the status message (the log-polling thread).

A pod's log is no watch event, and a kopf timer or daemon would put a finalizer on every
ModelService. So the status computations note which ModelServices have a pod fetching
or loading its model (`track_start`, with what they computed from: owner, Deployment, HPA,
pods), and one thread reads those pods' logs every PROGRESS_INTERVAL_S; a new last line is
stored and the status recomputed from the noted state (by the `refresh` the poller was
started with: this module knows nothing of status writes). Every status computation shows
the stored line (`with_known_progress`), not only the poller's, so the message does not
flip with each pod event.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from modelservice_operator.kube import KubeApiError, client
from modelservice_operator.memory import OwnerKey, OwnerMemory, owner_key
from modelservice_operator.pods import (
    PROGRESS_LOG_LINES,
    PodDiagnosis,
    last_progress_line,
    progress_source,
    with_progress,
)

# How often the log of a pod still fetching or loading its model is read for its last
# progress line (only starting pods are read; see Starting).
PROGRESS_INTERVAL_S = 10


@dataclass(frozen=True)
class Starting:
    """A ModelService with a pod on its way: what its status was computed from, whose log
    tells the progress, and the last line read from it."""

    owner: Mapping[str, Any]
    deployment: Mapping[str, Any] | None
    hpa: Mapping[str, Any] | None
    pods: list[Mapping[str, Any]]
    source: tuple[str, str]  # (pod, container)
    line: str | None = None
    canary: Mapping[str, Any] | None = None  # the canary's Deployment (spec.canary)


# Recompute and write a noted ModelService's status (reporting.refresh_status, without
# Warning events: this state is what the handlers last saw).
Refresh = Callable[[Starting, logging.Logger], None]

STARTING: OwnerMemory[Starting] = OwnerMemory()
_poller: threading.Thread | None = None


def forget(meta: Mapping[str, Any]) -> None:
    STARTING.pop(owner_key(meta))


def track_start(
    owner: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    hpa: Mapping[str, Any] | None,
    pods: list[Mapping[str, Any]],
    diagnosis: PodDiagnosis | None,
    canary: Mapping[str, Any] | None = None,
) -> None:
    """Note (or forget) the ModelService for the poller, from what its status was computed
    from; a line read of the same pod and container is kept, another's dropped."""
    source = progress_source(diagnosis)
    if source is None:
        forget(owner["metadata"])
        return

    def note(old: Starting | None) -> Starting:
        line = old.line if old is not None and old.source == source else None
        return Starting(owner, deployment, hpa, pods, source, line, canary)

    STARTING.update(owner_key(owner["metadata"]), note)


def with_known_progress(
    meta: Mapping[str, Any], diagnosis: PodDiagnosis | None
) -> PodDiagnosis | None:
    """The diagnosis with the last line read of its pod's log, if any."""
    source = progress_source(diagnosis)
    if source is None:
        return diagnosis
    start = STARTING.get(owner_key(meta))
    line = start.line if start is not None and start.source == source else None
    return with_progress(diagnosis, line)


def _store_line(key: OwnerKey, source: tuple[str, str], line: str) -> Starting | None:
    """Store a line read of `source`; the updated note, or None when there is no news (the
    same line) or the ModelService moved on meanwhile (forgotten, another pod)."""
    updated: list[Starting] = []

    def store(old: Starting | None) -> Starting | None:
        if old is None or old.source != source or old.line == line:
            return old
        updated.append(dataclasses.replace(old, line=line))
        return updated[0]

    STARTING.update(key, store)
    return updated[0] if updated else None


def poll_progress_once(logger: logging.Logger, refresh: Refresh) -> int:
    """Read the log of every noted starting pod; recompute the status of those whose last
    line changed. Returns how many changed."""
    changed = 0
    for key, start in STARTING.items():
        namespace = key[0]
        pod, container = start.source
        try:
            text = client().log_tail(namespace, pod, container, PROGRESS_LOG_LINES)
        except KubeApiError as e:
            # 400: the container has not started yet; 404: the pod is gone. Else, say so.
            log = logger.debug if e.status in (400, 404) else logger.warning
            log("cannot read the log of pod %s container %s: %s", pod, container, e)
            continue
        line = last_progress_line(text)
        if line is None:
            continue
        updated = _store_line(key, start.source, line)
        if updated is not None:
            changed += 1
            refresh(updated, logger)
    return changed


def _poll_forever(refresh: Refresh) -> None:
    logger = logging.getLogger("modelservice_operator.progress")
    while True:
        time.sleep(PROGRESS_INTERVAL_S)
        try:
            poll_progress_once(logger, refresh)
        except Exception:  # the poller must outlive any one failure
            logger.exception("reading the progress of starting pods failed")


def start_progress_poller(refresh: Refresh) -> None:
    """Start the poller thread once per process (the operator may be run several times in
    one process, as the tests do)."""
    global _poller
    if _poller is None or not _poller.is_alive():
        _poller = threading.Thread(
            target=_poll_forever, args=(refresh,), name="progress", daemon=True
        )
        _poller.start()
