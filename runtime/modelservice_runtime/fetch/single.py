"""One file fetched: from any source into a temp file beside DEST, checked, then renamed.

Also what a set's archive lands through (`download`), before it is unpacked.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from modelservice_runtime.fetch import http, local, s3
from modelservice_runtime.fetch.atomic import atomic_target
from modelservice_runtime.fetch.base import (
    FetchError,
    FetchResult,
    Transfer,
    check_digest,
    file_sha256,
    redact,
    resolve_dest,
    scheme_of,
)
from modelservice_runtime.fetch.verify import verify_onnx


def check_scheme(uri: str) -> None:
    """FetchError unless a file can be fetched from `uri`'s scheme."""
    show = redact(uri)
    scheme = scheme_of(uri)
    if scheme in ("http", "https") and urllib.parse.urlsplit(uri).path.endswith("/"):
        # A web server's index page is HTML in no standard form; guessing at its links
        # would fetch an unknown set. Archives and s3 prefixes are listed exactly.
        raise FetchError(
            f"URI: {show}: an http(s) directory cannot be listed; serve the set as one "
            f".tar, .tar.gz, .tgz or .zip, or use s3://bucket/prefix/"
        )
    if scheme not in ("", "file", "http", "https", "s3"):
        hint = " (pvc:// is mounted by the operator, not fetched)" if scheme == "pvc" else ""
        raise FetchError(
            f"URI: unsupported scheme {scheme!r} in {show!r}, expected https://, http://, "
            f"file://, s3:// or a local path{hint}"
        )


def download(uri: str, tmp: Path, transfer: Transfer) -> tuple[str, int]:
    """The bytes `uri` names into the file `tmp`; (sha256, bytes). The scheme is checked."""
    check_scheme(uri)
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        return http.fetch_http(uri, transfer, http.file_sink(tmp))
    if scheme == "s3":
        return s3.fetch_object(uri, tmp, transfer)
    return local.copy_file(local.local_path(uri), tmp, transfer.meter)


def fetch_file(
    uri: str, dest: str | Path, expected: str | None, transfer: Transfer, *, check_onnx: bool
) -> FetchResult:
    """`uri` to the file DEST (a directory DEST gets model.onnx), checked against `expected`
    and, with `check_onnx`, loaded as a model, before it replaces DEST."""
    show = redact(uri)
    target = resolve_dest(dest)
    if scheme_of(uri) in ("", "file"):
        src = local.local_path(uri)
        if src.exists() and target.exists() and src.resolve() == target.resolve():
            # Already in place (e.g. a read-only PVC): verify, never rewrite it.
            digest = file_sha256(src)
            check_digest(show, target, expected, digest)
            if check_onnx:
                verify_onnx(src, show)
            return FetchResult(target, digest, src.stat().st_size, copied=False)
    check_scheme(uri)
    try:
        with atomic_target(target) as tmp:
            digest, size = download(uri, tmp, transfer)
            check_digest(show, target, expected, digest)
            if check_onnx:
                verify_onnx(tmp, show)
    except OSError as e:
        # Creating/renaming the temp file in DEST's directory (read-only, full, ...).
        raise FetchError(f"DEST: cannot write {target}: {e.strerror or e}") from e
    return FetchResult(target, digest, size, copied=True)
