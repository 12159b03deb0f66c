"""The model cache of `modelservice fetch --cache-dir DIR`: a model fetched once per node
(or per shared volume), not once per pod.

Layout of DIR:

    entries/<key>/data        the model file, or the model's directory (a set)
    entries/<key>/entry.json  what it is: key, URI (redacted), sha256, bytes
    entries/<key>/last-used   its mtime is the entry's last hit or insert (LRU order)
    locks/<key>.lock          flock: one fetch per key at a time
    tmp/<key>.<random>/       an entry being built (renamed into entries/ once complete)

**Key.** With a sha256 (`--sha256`, spec.model.sha256) the key is that digest: the bytes
of a file or archive, the set digest of a directory. An entry is written only after its
content passed that check, so a hit is the right model and is not hashed again. Without
one, an http(s) URI is keyed by the URI and the server's strong ETag and Content-Length
(one HEAD request): as correct as the server's ETag, which must change whenever the bytes
do (S3, GCS, nginx, Apache do); a weak or missing ETag, a refused HEAD, and every other
URI without a sha256 bypass the cache (a plain fetch to DEST, and a line saying so).

**Concurrency.** A fetch takes its key's lock (`flock`, blocking) before it looks: a
second pod fetching the same model waits for the first and then finds the entry. The
entry is built under tmp/ and renamed into entries/ in one step, so a reader never sees
part of one, and where locks do not work (some network filesystems) two builders race to
the rename: one wins, the other discards its copy and uses the winner's.

**Publishing** an entry to DEST hardlinks each file when DEST is on the cache's
filesystem (no bytes copied, nothing left behind when the entry is evicted: the published
name keeps the inode), else copies it (EXDEV: in a pod the emptyDir and the cache volume
are separate mounts, so a hit costs a local disk copy instead of a download). Nothing
writes a published file in place (fetch replaces by rename), so sharing an inode is safe.
Serving the runtime straight from the cache was left out: an eviction could remove the
files under a runtime that restarts later.

**Eviction** (`--cache-max-bytes N`): after each fetch, entries are removed least
recently used first (by last-used) until the entries add up to at most N bytes. The
entry just used stays, even alone over N, and so does any entry whose lock another fetch
holds (it is being fetched or published). An entry is renamed into tmp/ before removal,
so it vanishes in one step. No bound: nothing is evicted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelservice_runtime.fetch import http
from modelservice_runtime.fetch.api import fetch_model
from modelservice_runtime.fetch.atomic import atomic_target, publish_dir
from modelservice_runtime.fetch.base import (
    FetchError,
    FetchResult,
    Log,
    normalize_sha256,
    redact,
    resolve_dest,
    stderr_log,
)
from modelservice_runtime.fetch.trees import iter_files

ENTRIES, LOCKS, TMP = "entries", "locks", "tmp"
DATA, META, LAST_USED = "data", "entry.json", "last-used"
HEAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path  # entries/<key>
    size: int
    last_used_ns: int


def cache_key(
    uri: str, sha256: str | None, *, env: Mapping[str, str], timeout: float = HEAD_TIMEOUT_S
) -> tuple[str | None, str]:
    """(the key, how it was made) or (None, why the cache is not used)."""
    expected = normalize_sha256(sha256)
    if expected is not None:
        return f"sha256-{expected}", "the sha256"
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme not in ("http", "https"):
        return None, "no sha256 (an http(s) URI without one is keyed by its ETag)"
    etag, length = http.head(uri, env=env, timeout=timeout)
    if etag is None:
        return None, f"no sha256 and no strong ETag from {redact(uri)}"
    # The URI whole (query included: another presigned URL may be another object), hashed
    # so that no signature lands on disk.
    ident = "\n".join((uri, etag, length or "")).encode()
    return f"etag-{hashlib.sha256(ident).hexdigest()}", f"the URI and ETag {etag}"


@contextlib.contextmanager
def _flock(path: Path, log: Log, what: str) -> Iterator[None]:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"cache: waiting for another fetch of {what}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _touch(entry: Path) -> None:
    # An explicit wall-clock stamp: the kernel's own mtime is coarse (a few ms), and two
    # uses in a row must not tie in the LRU order.
    now = time.time_ns()
    stamp = entry / LAST_USED
    stamp.touch()
    os.utime(stamp, ns=(now, now))


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def entries(cache_dir: Path) -> list[Entry]:
    """The complete entries, least recently used first."""
    out = []
    root = cache_dir / ENTRIES
    if not root.is_dir():
        return out
    for path in root.iterdir():
        stamp = path / LAST_USED
        if not (path / META).is_file() or not stamp.is_file():
            continue
        out.append(Entry(path.name, path, _tree_bytes(path / DATA), stamp.stat().st_mtime_ns))
    return sorted(out, key=lambda e: (e.last_used_ns, e.key))


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(src, dst)
    return "copy"


def publish(data: Path, dest: str | Path) -> tuple[Path, str]:
    """Put an entry's data at DEST atomically (as fetch would have: a file DEST, or a
    directory one, existing or written with a trailing /, gets model.onnx); (the path,
    how)."""
    if data.is_file():
        target = resolve_dest(dest)
        with atomic_target(target) as tmp:
            tmp.unlink()
            how = _link_or_copy(data, tmp)
        return target, how
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        tree = work / "tree"
        how = "hardlink"
        for rel, path in iter_files(data):
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if _link_or_copy(path, target) == "copy":
                how = "copy"
        tree.mkdir(exist_ok=True)  # an empty set still lands as a directory
        publish_dir(tree, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest, how


def insert(staging: Path, entry: Path) -> bool:
    """Rename a complete staging entry into place; False when another fetch's rename won
    (then the staging copy is removed and theirs is used)."""
    try:
        os.rename(staging, entry)
        return True
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return False


def _key_lock(cache_dir: Path, key: str) -> Path:
    return cache_dir / LOCKS / f"{key}.lock"


def evict(cache_dir: Path, max_bytes: int, keep: str, log: Log = stderr_log) -> list[str]:
    """Remove least recently used entries until they add up to <= max_bytes; the keys gone.

    `keep` (the entry just used) and entries whose lock another fetch holds are skipped.
    """
    gone: list[str] = []
    with _flock(cache_dir / LOCKS / ".evict.lock", log, "the eviction lock"):
        found = entries(cache_dir)
        total = sum(e.size for e in found)
        for e in found:
            if total <= max_bytes:
                break
            if e.key == keep:
                continue
            with open(_key_lock(cache_dir, e.key), "a+b") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being fetched or published right now
                try:
                    doomed = Path(tempfile.mkdtemp(prefix=f"{e.key}.", dir=cache_dir / TMP))
                    os.rename(e.path, doomed / "entry")
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
            shutil.rmtree(doomed, ignore_errors=True)
            total -= e.size
            gone.append(e.key)
            log(f"cache: evicted {e.key} ({e.size} bytes, least recently used)")
        if total > max_bytes:
            log(
                f"cache: {total} bytes in use, over --cache-max-bytes {max_bytes}: what is "
                "left is in use"
            )
    return gone


def _prepare(cache_dir: Path) -> None:
    try:
        for sub in (ENTRIES, LOCKS, TMP):
            (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(
            f"--cache-dir: cannot use {cache_dir}: {e.strerror or e} (it must be writable "
            "by the fetching user)"
        ) from e


def fetch_cached(
    uri: str,
    dest: str | Path,
    sha256: str | None,
    *,
    cache_dir: str | Path,
    max_bytes: int | None = None,
    log: Log = stderr_log,
    env: Mapping[str, str] | None = None,
    **fetch_kwargs: Any,
) -> FetchResult:
    """fetch_model through the cache at `cache_dir` (see the module's docstring)."""
    env = os.environ if env is None else env
    if max_bytes is not None and max_bytes <= 0:
        raise FetchError(f"--cache-max-bytes: expected bytes > 0, got {max_bytes}")
    cache = Path(cache_dir)
    key, how_keyed = cache_key(uri, sha256, env=env)
    if key is None:
        log(f"cache: not used: {how_keyed}")
        return fetch_model(uri, dest, sha256, log=log, env=env, **fetch_kwargs)
    _prepare(cache)
    with _flock(_key_lock(cache, key), log, key):
        result = _hit_or_fill(uri, dest, sha256, cache, key, how_keyed, log, env, fetch_kwargs)
    if max_bytes is not None:
        evict(cache, max_bytes, keep=key, log=log)
    return result


def _hit_or_fill(
    uri: str,
    dest: str | Path,
    sha256: str | None,
    cache: Path,
    key: str,
    how_keyed: str,
    log: Log,
    env: Mapping[str, str],
    fetch_kwargs: dict[str, Any],
) -> FetchResult:
    """Under the key's lock: publish the entry, filling it first on a miss."""
    for stale in (cache / TMP).glob(f"{key}.*"):
        # A fetch of this key that died mid-way (a live one would hold the lock).
        shutil.rmtree(stale, ignore_errors=True)
    entry = cache / ENTRIES / key
    if (entry / META).is_file():
        meta = json.loads((entry / META).read_text())
        _touch(entry)
        path, how = publish(entry / DATA, dest)
        log(f"cache: hit {key} (keyed by {how_keyed}): published {path} by {how}")
        return FetchResult(path, meta["sha256"], meta["size"], copied=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=cache / TMP))
    try:
        # A file lands as the file `data`, a set as the directory `data`.
        got = fetch_model(uri, staging / DATA, sha256, log=log, env=env, **fetch_kwargs)
        meta = {"key": key, "uri": redact(uri), "sha256": got.sha256, "size": got.size}
        (staging / META).write_text(json.dumps(meta, indent=1) + "\n")
        _touch(staging)
        won = insert(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not won:
        log(f"cache: another fetch stored {key} first; using its copy")
        _touch(entry)
    path, how = publish(entry / DATA, dest)
    log(f"cache: miss {key} (keyed by {how_keyed}): fetched into the cache, published "
        f"{path} by {how}")  # fmt: skip
    return FetchResult(path, got.sha256, got.size, copied=True)
