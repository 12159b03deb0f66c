"""Multi-file models for `modelservice fetch`: a directory, an archive or an s3 prefix.

A model above ONNX's 2 GiB protobuf limit is a `model.onnx` beside external data files, so
the unit fetched is a set of files. The set is built in a sibling temp directory of DEST
and renamed into place only once complete and verified: the runtime sees the old set or
the whole new one, never part of one.

- URI forms: a local directory (plain path, `file:///dir/`, a PVC mount), an archive
  (`.tar`, `.tar.gz`, `.tgz`, `.zip`) over http(s), file:// or s3://, and an s3 prefix
  (`s3://bucket/prefix/`: every object under it; `plan_prefix` checks the keys).
- Integrity: `--sha256` pins an archive's bytes; for a directory it pins the set
  digest (`set_digest`, printed by `modelservice digest PATH`).
- Safety: every archive member must be a regular file or directory whose normalized path
  stays under DEST (no `..`, no absolute path, no symlinks or hard links at all); the
  declared sizes must fit `max_unpacked_bytes` (default 4x the archive): all of them before
  anything is written (`extract_tar`, `extract_zip`), or, for a tar read as it downloads
  (`extract_tar_stream`), the running total before each member is written; bytes are
  counted again while extracting. A directory source with a
  symlink is refused the same way, and so is an s3 key with `..` or an absolute path.
  Every refusal names the member and the rule.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
DEFAULT_UNPACK_FACTOR = 4
CHUNK = 1 << 20


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


class SetError(Exception):
    """A multi-file fetch was refused; the message is one line naming the member and rule."""


def archive_kind(uri: str) -> str | None:
    """'tar' or 'zip' when the URI's path names an archive, else None."""
    path = urllib.parse.urlsplit(uri).path.lower() if "://" in uri else uri.lower()
    if path.endswith(".zip"):
        return "zip"
    if path.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def _safe_relpath(name: str, rule_prefix: str) -> PurePosixPath:
    """The member's path relative to DEST, or SetError when it would land outside it."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise SetError(f"{rule_prefix} {name!r}: absolute paths are refused")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SetError(f"{rule_prefix} {name!r}: '..' would leave DEST, refused")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _copy_counted(
    src: IO[bytes], out: IO[bytes], budget: list[int], member: str, limit: int
) -> None:
    """Copy while counting against the unpack budget (declared sizes can lie)."""
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return
        budget[0] += len(chunk)
        if budget[0] > limit:
            raise SetError(
                f"archive member {member!r}: unpacking exceeds the limit of {limit} bytes "
                f"(--max-unpacked-bytes), refused"
            )
        out.write(chunk)


def _check_total(declared: int, limit: int, member: str | None = None) -> None:
    if declared > limit:
        where = f"archive member {member!r}" if member is not None else "archive"
        upto = " with it" if member is not None else ""
        when = "before it is written" if member is not None else "before extracting"
        raise SetError(
            f"{where}: members declare {declared} bytes unpacked{upto}, over the limit of "
            f"{limit} bytes (--max-unpacked-bytes), refused {when}"
        )


def extract_tar(archive: Path, out: Path, limit: int) -> None:
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed below, errors mapped first
    except (tarfile.TarError, OSError) as e:
        raise SetError(f"archive: not a readable tar file: {e}") from e
    with tar:
        members = tar.getmembers()
        plan = [(m, _tar_member_path(m)) for m in members]
        _check_total(sum(m.size for m in members if m.isfile()), limit)
        budget = [0]
        for m, rel in plan:
            _extract_member(tar, m, out / rel, budget, limit)


def _tar_member_path(m: tarfile.TarInfo) -> PurePosixPath:
    """The rules every tar member is held to, in one place (both extractors)."""
    rel = _safe_relpath(m.name, "archive member")
    if m.issym() or m.islnk():
        raise SetError(f"archive member {m.name!r}: links are refused (-> {m.linkname!r})")
    if not (m.isfile() or m.isdir()):
        raise SetError(f"archive member {m.name!r}: only files and directories allowed")
    return rel


def _extract_member(
    tar: tarfile.TarFile, m: tarfile.TarInfo, target: Path, budget: list[int], limit: int
) -> None:
    if m.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(m)
    if src is None:
        raise SetError(f"archive member {m.name!r}: cannot be read")
    with src, open(target, "wb") as f:
        _copy_counted(src, f, budget, m.name, limit)


def extract_tar_stream(stream: IO[bytes], out: Path, limit: int) -> None:
    """extract_tar for an archive read once, front to back, as it downloads (no copy of the
    archive on disk). Each member is held to the same rules before anything of it is
    written; the declared sizes are added up as the members come, so the member that takes
    the total past `limit` is refused before its first byte, and bytes are counted again
    while written. What was unpacked before a refusal is the caller's to remove."""
    try:
        # A MiB a read: tarfile's stream default (10 KiB) costs a Python call per 10 KiB.
        tar = tarfile.open(fileobj=stream, mode="r|*", bufsize=CHUNK)  # noqa: SIM115
    except tarfile.TarError as e:
        raise SetError(f"archive: not a readable tar file: {e}") from e
    with tar:
        declared, budget = 0, [0]
        try:
            for m in tar:
                rel = _tar_member_path(m)
                declared += m.size if m.isfile() else 0
                _check_total(declared, limit, member=m.name)
                _extract_member(tar, m, out / rel, budget, limit)
        except tarfile.TarError as e:
            raise SetError(f"archive: not a readable tar file: {e}") from e


def extract_zip(archive: Path, out: Path, limit: int) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise SetError(f"archive: not a readable zip file: {e}") from e
    with zf:
        infos = zf.infolist()
        declared = 0
        for info in infos:
            _safe_relpath(info.filename, "archive member")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise SetError(f"archive member {info.filename!r}: links are refused")
            declared += info.file_size
        _check_total(declared, limit)
        budget = [0]
        for info in infos:
            rel = _safe_relpath(info.filename, "archive member")
            target = out / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as f:
                _copy_counted(src, f, budget, info.filename, limit)


def iter_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every regular file under root; symlinks refused."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise SetError(f"{rel!r}: symlinks are refused in a model directory")
            if name in filenames:
                if not path.is_file():
                    raise SetError(f"{rel!r}: only regular files and directories allowed")
                yield rel, path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_digest(root: Path) -> str:
    """The digest of a directory: sha256 over its sorted lines `<sha256>  <relpath>\\n`.

    One line per regular file (recursively; directories themselves and empty directories
    do not count), relpath in POSIX form relative to root, lines sorted by relpath's UTF-8
    bytes, joined and hashed. The same set of names and contents gives the same digest
    wherever it is; `modelservice digest DIR` prints it.
    """
    return digest_of((rel, _file_sha256(p)) for rel, p in iter_files(root))


def digest_of(files: Iterable[tuple[str, str]]) -> str:
    """The set digest from (relative posix path, sha256 hex) pairs, the one definition that
    `set_digest` and a fetch hashing files as they stream (s3 prefixes) both use."""
    lines = sorted((rel.encode(), f"{sha}  {rel}\n".encode()) for rel, sha in files)
    digest = hashlib.sha256()
    for _, line in lines:
        digest.update(line)
    return digest.hexdigest()


def s3_prefix(uri: str) -> tuple[str, str] | None:
    """(bucket, prefix) when `uri` names an s3 prefix (`s3://bucket/prefix/`, a trailing
    slash; `s3://bucket/` for the whole bucket), None for anything else."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.netloc or not parts.path.endswith("/"):
        return None
    return parts.netloc, parts.path.lstrip("/")


def plan_prefix(prefix: str, objects: Iterable[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """(key, relative path under DEST, size) for each object listed under `prefix`.

    The relative path is the key less the prefix, held to the archive members' rules: no
    absolute path, no `..` (S3 keys are free text: `prefix/../x` is a legal key). Zero-size
    keys ending in `/` are the folder markers consoles create and are skipped. Two keys
    that land on the same path (`a/./b` and `a/b`), or a file where another key needs a
    directory (`a` and `a/b`), are refused rather than one silently overwriting the other.
    """
    plan: list[tuple[str, str, int]] = []
    seen: dict[str, str] = {}
    for key, size in objects:
        if not key.startswith(prefix):
            raise SetError(f"s3 key {key!r}: listed outside the prefix {prefix!r}, refused")
        if key.endswith("/") and size == 0:
            continue
        rel = _safe_relpath(key[len(prefix) :], f"s3 key {key!r}: path")
        if rel == PurePosixPath("."):
            raise SetError(f"s3 key {key!r}: names the prefix itself, not a file under it")
        name = rel.as_posix()
        if name in seen:
            raise SetError(f"s3 key {key!r}: lands on {name!r} like key {seen[name]!r}, refused")
        seen[name] = key
        plan.append((key, name, size))
    for name, key in seen.items():
        for parent in PurePosixPath(name).parents:
            other = seen.get(parent.as_posix())
            if other is not None:
                raise SetError(
                    f"s3 key {key!r}: needs {parent.as_posix()!r} as a directory, but key "
                    f"{other!r} is a file there, refused"
                )
    if not plan:
        raise SetError(f"s3 prefix {prefix!r}: no objects under it")
    return plan


def copy_tree(
    src: Path, out: Path, on_bytes: Callable[[int], None] | None = None
) -> list[tuple[str, str]]:
    """Copy every regular file under src to out; (relpath, sha256) of each, hashed from the
    bytes as they were copied, so the set digest needs no second read of a large set."""
    hashes = []
    for rel, path in iter_files(src):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with BackgroundHash() as digest, open(path, "rb") as f, open(target, "wb") as t:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                t.write(chunk)
                digest.update(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        hashes.append((rel, digest.hexdigest()))
    return hashes


def tree_size(root: Path) -> int:
    """Bytes of every regular file under root (symlinks refused, as in iter_files)."""
    return sum(p.stat().st_size for _, p in iter_files(root))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_dir(staging: Path, dest: Path) -> None:
    """Rename the complete staging dir to dest, replacing what was there.

    An existing dest is first renamed aside, then removed, so a reader sees the old set or
    the new one; never a mixture.
    """
    mode = 0o777 & ~_umask()
    for dirpath, _, filenames in os.walk(staging):
        os.chmod(dirpath, mode)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~_umask())
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.rmdir(old)
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def find_model_file(root: Path) -> Path | None:
    """The ONNX file a directory serves: model.onnx, model.onnx/model.onnx (Triton), or
    the only .onnx file at the top; None when there is none or the choice is ambiguous."""
    direct = root / "model.onnx"
    if direct.is_file():
        return direct
    if direct.is_dir():
        inner = direct / "model.onnx"
        if inner.is_file():
            return inner
        found = sorted(p for p in direct.glob("*.onnx") if p.is_file())
        return found[0] if len(found) == 1 else None
    found = sorted(p for p in root.glob("*.onnx") if p.is_file())
    return found[0] if len(found) == 1 else None
