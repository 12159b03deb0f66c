"""Multi-file models for `modelservice fetch`: a directory, an archive or an s3 prefix.

A model above ONNX's 2 GiB protobuf limit is a `model.onnx` beside external data files, so
the unit fetched is a set of files. The set is built in a sibling temp directory of DEST
and renamed into place only once complete and verified: the runtime sees the old set or
the whole new one, never part of one.

- URI forms: a local directory (plain path, `file:///dir/`, a PVC mount), an archive
  (`.tar`, `.tar.gz`, `.tgz`, `.zip`) over http(s), file:// or s3://,.
- Integrity: `--sha256` pins an archive's bytes; for a directory it pins the set
  digest (`set_digest`, printed by `modelservice digest PATH`).
- Safety: every archive member must be a regular file or directory whose normalized path
  stays under DEST (no `..`, no absolute path, no symlinks or hard links at all); the
  declared sizes must fit `max_unpacked_bytes` (default 4x the archive) before anything is
  written, and bytes are counted again while extracting. A directory source with a
  symlink is refused the same way. Every refusal names the member and the rule.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from modelservice_cli import fetch_flags
from modelservice_runtime import model_files

ARCHIVE_SUFFIXES = fetch_flags.ARCHIVE_SUFFIXES
DEFAULT_UNPACK_FACTOR = 4
CHUNK = 1 << 20


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


def _check_total(declared: int, limit: int) -> None:
    if declared > limit:
        raise SetError(
            f"archive: members declare {declared} bytes unpacked, over the limit of {limit} "
            f"bytes (--max-unpacked-bytes), refused before extracting"
        )


def extract_tar(archive: Path, out: Path, limit: int) -> None:
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed below, errors mapped first
    except (tarfile.TarError, OSError) as e:
        raise SetError(f"archive: not a readable tar file: {e}") from e
    with tar:
        members = tar.getmembers()
        plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
        declared = 0
        for m in members:
            rel = _safe_relpath(m.name, "archive member")
            if m.issym() or m.islnk():
                raise SetError(f"archive member {m.name!r}: links are refused (-> {m.linkname!r})")
            if not (m.isfile() or m.isdir()):
                raise SetError(f"archive member {m.name!r}: only files and directories allowed")
            declared += m.size if m.isfile() else 0
            plan.append((m, rel))
        _check_total(declared, limit)
        budget = [0]
        for m, rel in plan:
            target = out / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:
                raise SetError(f"archive member {m.name!r}: cannot be read")
            with src, open(target, "wb") as f:
                _copy_counted(src, f, budget, m.name, limit)


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
    lines = sorted(
        (rel.encode(), f"{_file_sha256(p)}  {rel}\n".encode()) for rel, p in iter_files(root)
    )
    digest = hashlib.sha256()
    for _, line in lines:
        digest.update(line)
    return digest.hexdigest()


def copy_tree(src: Path, out: Path) -> None:
    for rel, path in iter_files(src):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


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
    """The ONNX file a directory serves (model_files.locate's rule), or None when there is
    none or the choice is ambiguous."""
    try:
        return model_files.locate(root)
    except model_files.ModelFileError:
        return None
