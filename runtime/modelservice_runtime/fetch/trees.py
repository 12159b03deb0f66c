"""A set of files as a directory: the paths allowed in one, copying one, and its digest.

A model above ONNX's 2 GiB protobuf limit is a `model.onnx` beside external data files, so
the unit fetched is a set of files. A set digest pins a directory the way a sha256 pins a
file (`set_digest`, printed by `modelservice digest PATH`). Every path in a set stays
under DEST: no `..`, no absolute path, no symlinks (`safe_relpath`, `iter_files`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from modelservice_runtime import model_files
from modelservice_runtime.fetch.base import CHUNK, BackgroundHash, SetError, file_sha256


def safe_relpath(name: str, rule_prefix: str) -> PurePosixPath:
    """The member's path relative to DEST, or SetError when it would land outside it."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise SetError(f"{rule_prefix} {name!r}: absolute paths are refused")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SetError(f"{rule_prefix} {name!r}: '..' would leave DEST, refused")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


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


def set_digest(root: Path) -> str:
    """The digest of a directory: sha256 over its sorted lines `<sha256>  <relpath>\\n`.

    One line per regular file (recursively; directories themselves and empty directories
    do not count), relpath in POSIX form relative to root, lines sorted by relpath's UTF-8
    bytes, joined and hashed. The same set of names and contents gives the same digest
    wherever it is; `modelservice digest DIR` prints it.
    """
    return digest_of((rel, file_sha256(p)) for rel, p in iter_files(root))


def digest_of(files: Iterable[tuple[str, str]]) -> str:
    """The set digest from (relative posix path, sha256 hex) pairs, the one definition that
    `set_digest` and a fetch hashing files as they stream (s3 prefixes) both use."""
    lines = sorted((rel.encode(), f"{sha}  {rel}\n".encode()) for rel, sha in files)
    digest = hashlib.sha256()
    for _, line in lines:
        digest.update(line)
    return digest.hexdigest()


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


def find_model_file(root: Path) -> Path | None:
    """The ONNX file a directory serves (model_files.locate's rule), or None when there is
    none or the choice is ambiguous."""
    try:
        return model_files.locate(root)
    except model_files.ModelFileError:
        return None
