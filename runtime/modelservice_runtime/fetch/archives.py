"""Archives as model sets: `.tar`, `.tar.gz`, `.tgz` and `.zip`, unpacked under rules.

Every member must be a regular file or directory whose normalized path stays under DEST
(no `..`, no absolute path, no symlinks or hard links at all); the declared sizes must fit
`limit` (--max-unpacked-bytes, default 4x the archive): all of them before anything is
written (`extract_tar`, `extract_zip`), or, for a tar read as it downloads
(`extract_tar_stream`), the running total before each member is written; bytes are
counted again while extracting. Every refusal names the member and the rule.
"""

from __future__ import annotations

import stat
import tarfile
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from modelservice_runtime.fetch.base import CHUNK, SetError
from modelservice_runtime.fetch.trees import safe_relpath

DEFAULT_UNPACK_FACTOR = 4


def archive_kind(uri: str) -> str | None:
    """'tar' or 'zip' when the URI's path names an archive, else None."""
    path = urllib.parse.urlsplit(uri).path.lower() if "://" in uri else uri.lower()
    if path.endswith(".zip"):
        return "zip"
    if path.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


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
    rel = safe_relpath(m.name, "archive member")
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
            safe_relpath(info.filename, "archive member")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise SetError(f"archive member {info.filename!r}: links are refused")
            declared += info.file_size
        _check_total(declared, limit)
        budget = [0]
        for info in infos:
            rel = safe_relpath(info.filename, "archive member")
            target = out / rel
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as f:
                _copy_counted(src, f, budget, info.filename, limit)
