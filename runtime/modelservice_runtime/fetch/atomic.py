"""Atomic replacement of a file or a directory: readers see the old one or the complete new
one, never a part.

The model-fetch init container and the runtime share a volume; a crash, a timeout or a
checksum failure mid-write must not leave a truncated /models/model.onnx that a restarted
runtime would then try to serve.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process's umask."""
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_target(dest: str | Path) -> Iterator[Path]:
    """Yield a temp path in `dest`'s directory; on success rename it over `dest`.

    Same directory, so os.replace is a rename on one filesystem (atomic on POSIX). On any
    exception the temp file is removed and `dest` is left untouched. The file gets normal
    permissions (0666 & ~umask) rather than mkstemp's 0600, so a runtime running as another
    user in the same group can read what an init container wrote.
    """
    dest = Path(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def publish_dir(staging: Path, dest: Path) -> None:
    """Rename the complete staging dir to dest, replacing what was there.

    An existing dest is first renamed aside, then removed, so a reader sees the old set or
    the new one; never a mixture. Modes become the usual ones (as atomic_target's).
    """
    mask = umask()
    for dirpath, _, filenames in os.walk(staging):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)
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
