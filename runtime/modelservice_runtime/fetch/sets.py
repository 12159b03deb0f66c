"""Multi-file models for `modelservice fetch`: a directory, an archive or an s3 prefix.

The set is built in a sibling temp directory of DEST and renamed into place only once
complete and verified: the runtime sees the old set or the whole new one, never part of
one.

- URI forms: a local directory (plain path, `file:///dir/`, a PVC mount), an archive
  (`.tar`, `.tar.gz`, `.tgz`, `.zip`) over http(s), file:// or s3://, and an s3 prefix
  (`s3://bucket/prefix/`: every object under it; `s3.plan_prefix` checks the keys).
- Integrity: `--sha256` pins an archive's bytes; for a directory or a prefix it pins the
  set digest (`trees.set_digest`, printed by `modelservice digest PATH`).
- Safety: archives.py's rules for members, trees.py's for paths; a directory source with
  a symlink is refused, and so is an s3 key with `..` or an absolute path.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from modelservice_runtime.fetch import archives, http, local, s3, trees
from modelservice_runtime.fetch.atomic import publish_dir
from modelservice_runtime.fetch.base import (
    CHUNK,
    BackgroundHash,
    FetchError,
    FetchResult,
    Transfer,
    check_digest,
    copy_stream,
    redact,
    refusals_named,
    scheme_of,
)
from modelservice_runtime.fetch.progress import Progress
from modelservice_runtime.fetch.single import download
from modelservice_runtime.fetch.verify import verify_set


def set_kind(uri: str) -> str | None:
    """'archive', 'prefix' or 'dir' for a multi-file URI, None for a single file."""
    if archives.archive_kind(uri):
        return "archive"
    if s3.s3_prefix(uri) is not None:
        return "prefix"
    if local.is_local_dir(uri):
        return "dir"
    return None


def fetch_set(
    kind: str,
    uri: str,
    dest: Path,
    expected: str | None,
    transfer: Transfer,
    *,
    max_unpacked_bytes: int | None,
    check_onnx: bool,
) -> FetchResult:
    """A directory, archive or prefix built beside DEST, checked, then renamed into place."""
    show = redact(uri)
    if max_unpacked_bytes is not None and max_unpacked_bytes <= 0:
        raise FetchError(f"--max-unpacked-bytes: expected bytes > 0, got {max_unpacked_bytes}")
    if kind == "dir":
        src = local.local_path(uri)
        if dest.exists() and src.resolve() == dest.resolve():
            with refusals_named(show):
                digest = trees.set_digest(src)
            check_digest(show, dest, expected, digest)
            return FetchResult(dest, digest, trees.tree_size(dest), copied=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as e:
        raise FetchError(f"DEST: cannot write beside {dest}: {e.strerror or e}") from e
    tree = work / "tree"
    try:
        tree.mkdir()
        if kind == "archive":
            pin = functools.partial(check_digest, show, dest, expected)
            digest = _fetch_archive(uri, tree, max_unpacked_bytes, transfer, pin)
        elif kind == "prefix":
            digest = s3.fetch_prefix(uri, tree, transfer)
        else:
            digest = _copy_dir(uri, tree, transfer)
        check_digest(show, dest, expected, digest)
        if check_onnx:
            verify_set(tree, show)
        size = trees.tree_size(tree)
        publish_dir(tree, dest)
    except OSError as e:
        raise FetchError(f"DEST: cannot write {dest}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FetchResult(dest, digest, size, copied=True)


def _copy_dir(uri: str, tree: Path, transfer: Transfer) -> str:
    """A local directory copied into `tree`; its set digest."""
    src = local.local_path(uri)
    with refusals_named(redact(uri)):
        total = trees.tree_size(src)
        with transfer.meter(src.name or str(src), total) as progress:
            hashes = trees.copy_tree(src, tree, progress.add)
    return trees.digest_of(hashes)


def _fetch_archive(
    uri: str,
    tree: Path,
    max_unpacked_bytes: int | None,
    transfer: Transfer,
    pin: Callable[[str], None],
) -> str:
    """An archive unpacked into `tree`; the archive's sha256.

    A tar over http(s) or on local disk is unpacked as it is read (the caller checks the
    digest after); zip needs its central directory (at the end) first, and an s3 archive
    still lands whole: those are checked with `pin` before anything is unpacked.
    """
    scheme = scheme_of(uri)
    kind = archives.archive_kind(uri)
    if kind == "tar" and scheme in ("", "file", "http", "https"):
        return _stream_tar(uri, tree, max_unpacked_bytes, transfer)
    archive = tree.parent / "archive"
    digest, size = download(uri, archive, transfer)
    pin(digest)
    _unpack(redact(uri), kind, archive, tree, max_unpacked_bytes, size)
    return digest


def _unpack(
    show: str, kind: str | None, archive: Path, tree: Path, limit: int | None, size: int
) -> None:
    """The archive file unpacked into `tree` and removed; the limit defaults to 4x its size."""
    extract = archives.extract_zip if kind == "zip" else archives.extract_tar
    with refusals_named(show):
        extract(archive, tree, limit or archives.DEFAULT_UNPACK_FACTOR * max(size, 1))
    archive.unlink()


def _stream_tar(uri: str, tree: Path, max_unpacked_bytes: int | None, transfer: Transfer) -> str:
    """Unpack a tar into `tree` while it downloads; return the archive's sha256.

    No copy of the archive is written: a set costs the disk once, not twice. The limit is
    --max-unpacked-bytes, else 4x the archive's size, which needs that size up front (a
    Content-Length); without one the archive is written first and unpacked after, as zip
    is. A retried download starts again from an empty tree. The caller checks the digest
    before anything is published.
    """
    show = redact(uri)

    def sink(
        read: Callable[[int], bytes], total: int | None, progress: Progress
    ) -> tuple[str, int]:
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        try:
            if max_unpacked_bytes is None and total is None:
                archive = tree.parent / "archive"
                with open(archive, "wb") as out:
                    hexdigest, size = copy_stream(read, out, progress)
                _unpack(show, "tar", archive, tree, None, size)
                return hexdigest, size
            limit = max_unpacked_bytes or archives.DEFAULT_UNPACK_FACTOR * max(total or 0, 1)
            with refusals_named(show):
                return _unpack_stream(read, tree, limit, progress)
        except OSError as e:  # reads raise ReadFailed: this is the disk
            raise FetchError(f"DEST: cannot write {tree.parent}: {e.strerror or e}") from e

    if scheme_of(uri) in ("http", "https"):
        digest, _ = http.fetch_http(uri, transfer, sink)
        return digest
    src = local.local_path(uri)
    with local.open_source(src) as (read, size), transfer.meter(src.name, size) as progress:
        digest, _ = sink(read, size, progress)
    return digest


def _unpack_stream(
    read: Callable[[int], bytes], tree: Path, limit: int, progress: Progress
) -> tuple[str, int]:
    """A tar body unpacked into `tree` as `read` yields it; (its sha256, its bytes)."""
    seen = [0]

    class Tee:
        """The body as tarfile reads it, hashed (`digest`, set below) and counted."""

        digest: BackgroundHash

        def read(self, n: int = -1) -> bytes:
            chunk = read(CHUNK if n is None or n < 0 else n)
            self.digest.update(chunk)
            seen[0] += len(chunk)
            progress.add(len(chunk))
            return chunk

    tee = Tee()
    with BackgroundHash() as tee.digest:
        archives.extract_tar_stream(tee, tree, limit)  # type: ignore[arg-type]
        while tee.read(CHUNK):  # what follows the last member (padding) is hashed
            pass
    return tee.digest.hexdigest(), seen[0]
