"""Local sources: a plain path or file:///path, which is also how a pvc:// model arrives
(the operator mounts the claim into the pod and passes the path under it)."""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from modelservice_runtime.fetch.base import FetchError, Meter, copy_stream, scheme_of


def local_path(uri: str) -> Path:
    """The path a plain path or file:// URI names (file:// must be local)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(
                f"URI: file:// URIs must be local (file:///path), got host {parts.netloc!r}"
            )
        return Path(urllib.request.url2pathname(parts.path))
    return Path(uri)


def is_local_dir(uri: str) -> bool:
    """A plain path or file:// URI naming a directory."""
    if scheme_of(uri) not in ("", "file"):
        return False
    try:
        return local_path(uri).is_dir()
    except FetchError:
        return False


@contextmanager
def open_source(src: Path) -> Iterator[tuple[Callable[[int], bytes], int]]:
    """(read, size) of a local file, every error a FetchError naming it."""
    try:
        source = open(src, "rb")  # noqa: SIM115 - closed below, errors mapped first
    except FileNotFoundError:
        raise FetchError(f"URI: {src} does not exist") from None
    except IsADirectoryError:
        raise FetchError(f"URI: {src} is a directory, expected a model file") from None
    except OSError as e:
        raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e

    def read(n: int) -> bytes:
        try:
            return source.read(n)
        except OSError as e:
            raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e

    with source:
        yield read, os.fstat(source.fileno()).st_size


def copy_file(src: Path, tmp: Path, meter: Meter) -> tuple[str, int]:
    """A local file into `tmp`, hashed as it is copied; (sha256, bytes)."""
    with (
        open_source(src) as (read, size),
        open(tmp, "wb") as out,
        meter(src.name, size) as progress,
    ):
        return copy_stream(read, out, progress)
