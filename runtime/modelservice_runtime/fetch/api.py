"""`fetch_model`: the one entry to fetching a model, a file or a set, from any source."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelservice_runtime.fetch.base import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    FetchError,
    FetchResult,
    Log,
    Transfer,
    normalize_sha256,
    stderr_log,
)
from modelservice_runtime.fetch.progress import DEFAULT_INTERVAL_S, Progress
from modelservice_runtime.fetch.sets import fetch_set, set_kind
from modelservice_runtime.fetch.single import fetch_file


def fetch_model(
    uri: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT_S,
    backoff: float = DEFAULT_BACKOFF_S,
    progress: bool | None = None,
    progress_interval: float = DEFAULT_INTERVAL_S,
    check_onnx: bool = True,
    env: Mapping[str, str] | None = None,
    log: Log = stderr_log,
    max_unpacked_bytes: int | None = None,
) -> FetchResult:
    """Fetch `uri` to `dest` atomically, verify it, and say what was written.

    A directory, an archive or an s3 prefix (see sets.py) lands as a directory at DEST;
    anything else is one file. Progress lines (progress.py) go to `log` every
    `progress_interval` seconds; `progress=False` or an interval of 0 turns them off.
    `env` defaults to os.environ (tests pass their own). Raises FetchError with a one-line
    message.
    """
    expected = normalize_sha256(sha256)
    if retries < 0:
        raise FetchError(f"--retries: expected an integer >= 0, got {retries}")
    if timeout <= 0:
        raise FetchError(f"--timeout: expected seconds > 0, got {timeout}")
    if progress_interval < 0:
        raise FetchError(f"--progress-interval: expected seconds >= 0, got {progress_interval}")
    if not uri:
        raise FetchError("URI: expected a model URI or path, got an empty string")
    interval = 0.0 if progress is False else progress_interval
    transfer = Transfer(
        env=os.environ if env is None else env,
        retries=retries,
        timeout=timeout,
        backoff=backoff,
        log=log,
        meter=functools.partial(Progress, log=log, interval=interval),
    )
    kind = set_kind(uri)
    if kind is not None:
        return fetch_set(
            kind,
            uri,
            Path(dest),
            expected,
            transfer,
            max_unpacked_bytes=max_unpacked_bytes,
            check_onnx=check_onnx,
        )
    return fetch_file(uri, dest, expected, transfer, check_onnx=check_onnx)


def fetch(uri: str, dest: str | Path, sha256: str | None = None, **kwargs: Any) -> Path:
    """Fetch `uri` to `dest` (see fetch_model for the options); return the model's path."""
    return fetch_model(uri, dest, sha256, **kwargs).path
