"""What every part of `modelservice fetch` shares: the errors, the result, the options of a
transfer, retries with backoff, and the hashing copy loop.

Nothing here knows a source (http, s3, a local path) or a set; the modules that do import
this one, never the other way round.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from modelservice_runtime.errors import first_line
from modelservice_runtime.fetch.progress import Progress

DEFAULT_FILENAME = "model.onnx"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
CHUNK = 1 << 20

Log = Callable[[str], None]
# Progress(label, total) for one transfer, already bound to the fetch's log and interval.
Meter = Callable[[str, int | None], Progress]
T = TypeVar("T")


class FetchError(Exception):
    """A fetch failed for good; the message is one line and names the URI or option."""


class SetError(Exception):
    """A multi-file fetch was refused; the message is one line naming the member and rule."""


@contextlib.contextmanager
def refusals_named(show: str) -> Iterator[None]:
    """A SetError inside becomes the FetchError `<show>: <the refusal>`."""
    try:
        yield
    except SetError as e:
        raise FetchError(f"{show}: {e}") from e


class Retryable(Exception):
    """One attempt failed in a way another attempt may fix (network, 5xx, truncation)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReadFailed(Exception):
    """The source broke off mid-body: the network, not the archive or the disk."""


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    copied: bool  # False when URI already was DEST and it was verified in place


@dataclass(frozen=True)
class Transfer:
    """How bytes are moved, whatever the source: the options every source takes."""

    env: Mapping[str, str]
    retries: int
    timeout: float
    backoff: float
    log: Log
    meter: Meter


def stderr_log(message: str) -> None:
    """The default `log`: one line on stderr, flushed (the init container's log)."""
    print(message, file=sys.stderr, flush=True)


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case; '' for a plain path (one letter before ':' is a
    Windows drive, not a scheme)."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme


def is_local(uri: str) -> bool:
    """A plain path or a file:// URI."""
    return scheme_of(uri) in ("", "file")


def redact(uri: str) -> str:
    """The URI without userinfo or query string (presigned URLs carry signatures there)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    query = "..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host_port(parts), parts.path, query, ""))


def host_port(parts: urllib.parse.SplitResult) -> str:
    """`host[:port]` of a split URI without its userinfo (IPv6 hosts bracketed)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def normalize_sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    digest = value.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:") :]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"--sha256: expected 64 hex characters, got {value!r}")
    return digest


def check_digest(show: str, target: Path, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected:
        raise FetchError(
            f"{show}: sha256 mismatch: expected {expected}, got {actual}; {target} was not written"
        )


def resolve_dest(dest: str | Path) -> Path:
    """DEST as a file path: an existing directory (or a path ending in /) gets model.onnx."""
    text = str(dest)
    path = Path(dest)
    if path.is_dir() or text.endswith(("/", os.sep)):
        path = path / DEFAULT_FILENAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"DEST: cannot create directory {path.parent}: {e.strerror}") from e
    if path.is_dir():
        raise FetchError(f"DEST: {path} is a directory")
    return path


def backoff_delay(backoff: float, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `backoff`, capped; a server's
    Retry-After is honoured up to twice the cap."""
    delay = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
    if retry_after is not None:
        delay = min(MAX_BACKOFF_S * 2, max(delay, retry_after))
    return delay


def with_retries(
    attempt_once: Callable[[], T], transfer: Transfer, *, show: str, what: str = ""
) -> T:
    """`attempt_once()` until it does not raise Retryable, at most 1 + retries times, with a
    log line and a backoff between attempts; FetchError naming `show` (and `what`, the part
    of it being fetched) when the last attempt fails too."""
    attempts = transfer.retries + 1
    where = f"{show}: {what}" if what else show
    for attempt in range(1, attempts + 1):
        try:
            return attempt_once()
        except Retryable as e:
            if attempt == attempts:
                raise FetchError(
                    f"{where}: giving up after {attempts} attempt(s): {first_line(e)}"
                ) from e
            delay = backoff_delay(transfer.backoff, attempt, e.retry_after)
            transfer.log(
                f"fetch {where}: attempt {attempt}/{attempts} failed ({e}); retrying in {delay:g}s"
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class BackgroundHash:
    """sha256 computed in a thread beside the copy loop that feeds it.

    hashlib releases the GIL on large updates, and on these machines sha256 runs at a few
    hundred MB/s, slower than a loopback download or a disk: hashed inline it would set the
    pace of every fetch. Chunks are handed over (bytes are immutable) through a short queue,
    so at most `depth` chunks wait in memory. Use as a context manager; `hexdigest()` after.
    """

    def __init__(self, depth: int = 8) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._done = False

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def __enter__(self) -> BackgroundHash:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        self._done = True

    def hexdigest(self) -> str:
        assert self._done, "hexdigest() before the hashing thread finished"
        return self._digest.hexdigest()


def copy_stream(
    read: Callable[[int], bytes], out: IO[bytes], progress: Progress
) -> tuple[str, int]:
    """Stream to `out`, hashing as we go (BackgroundHash); (sha256, bytes). File write errors
    are final (FetchError); read errors are the caller's to map."""
    done = 0
    with BackgroundHash() as digest:
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise FetchError(
                    f"DEST: cannot write to {Path(out.name).parent}: {e.strerror or e}"
                ) from e
            digest.update(chunk)
            done += len(chunk)
            progress.add(len(chunk))
    return digest.hexdigest(), done


def file_sha256(path: Path) -> str:
    """The sha256 of one file, read in CHUNK pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
