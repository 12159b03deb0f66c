"""`modelservice fetch URI DEST`: get a model onto local disk, atomically, and prove it is one.

This is what the `model-fetch` init container runs before the runtime starts, so a failure
here must be loud and final: a one-line error and a non-zero exit, never a half-written or
unverified /models/model.onnx that the runtime would then report ready on.

- Schemes: https/http (stdlib urllib, no extra dependency), file://, plain paths, and s3://
  when boto3 is installed (one key, or every object under a prefix ending in `/`).
- Progress: a line every --progress-interval seconds (tools/progress.py has the format).
- Credentials come from the environment only (the operator wires a Secret in with envFrom):
  MODELSERVICE_FETCH_TOKEN (bearer) or MODELSERVICE_FETCH_USERNAME/PASSWORD (basic) for
  http(s); the usual AWS_* variables for s3. They are never printed, and the Authorization
  header is dropped when a redirect leaves the original host.
- Bytes go to a temp file beside DEST, are hashed while streaming, checked (sha256, then
  "is this a loadable ONNX model"), and only then renamed over DEST.
- Connection errors, timeouts, truncated bodies, 5xx, 408 and 429 are retried with
  exponential backoff; 4xx such as 401/403/404 fail at once, since retrying cannot fix them.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.client
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from modelservice_runtime.errors import first_line
from modelservice_runtime.serving.external_data import ExternalDataError, check_external_data
from modelservice_runtime.tools import fetch_set
from modelservice_runtime.tools.atomic import atomic_target
from modelservice_runtime.tools.progress import DEFAULT_INTERVAL_S as DEFAULT_PROGRESS_INTERVAL_S
from modelservice_runtime.tools.progress import Progress

TOKEN_ENV = "MODELSERVICE_FETCH_TOKEN"
USERNAME_ENV = "MODELSERVICE_FETCH_USERNAME"
PASSWORD_ENV = "MODELSERVICE_FETCH_PASSWORD"
DEFAULT_FILENAME = "model.onnx"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
CHUNK = 1 << 20
RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx
USER_AGENT = "modelservice-fetch/0.1"

Log = Callable[[str], None]
# Progress(label, total) for one transfer, already bound to the fetch's log and interval.
Meter = Callable[[str, int | None], Progress]


class FetchError(Exception):
    """A fetch failed for good; the message is one line and names the URI or option."""


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix (network, 5xx, truncation)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    copied: bool  # False when URI already was DEST and it was verified in place


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def redact(uri: str) -> str:
    """The URI without userinfo or query string (presigned URLs carry signatures there)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "..." if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def normalize_sha256(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    digest = value.strip().lower()
    if digest.startswith("sha256:"):
        digest = digest[len("sha256:") :]
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(f"--sha256: expected 64 hex characters, got {value!r}")
    return digest


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


def auth_header(env: Mapping[str, str], uri: str) -> str | None:
    """Authorization header value from the environment (or URL userinfo), never logged."""
    token = env.get(TOKEN_ENV, "")
    if token:
        return f"Bearer {token.strip()}"
    user, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
    if user is not None or password is not None:
        if not user or password is None:
            raise FetchError(
                f"{USERNAME_ENV} and {PASSWORD_ENV}: expected both to be set for basic auth, "
                f"got only {USERNAME_ENV if user else PASSWORD_ENV}"
            )
    else:
        parts = urllib.parse.urlsplit(uri)
        if parts.username is None:
            return None
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
    raw = f"{user}:{password}".encode()
    return f"Basic {base64.b64encode(raw).decode('ascii')}"


def _copy_stream(
    read: Callable[[int], bytes], out: IO[bytes], progress: Progress
) -> tuple[str, int]:
    """Stream to `out`, hashing as we go (in a thread beside the copy: fetch_set.
    BackgroundHash); file write errors are final, read errors are not."""
    done = 0
    with fetch_set.BackgroundHash() as digest:
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


class _SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but keep Authorization only while scheme, host and port stay the same.

    urllib forwards every header on redirect; a registry that redirects to a CDN or a
    presigned S3 URL must not receive the user's token.
    """

    def redirect_request(  # type: ignore[override]
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_parts = urllib.parse.urlsplit(req.full_url)
            new_parts = urllib.parse.urlsplit(new.full_url)
            same = (old_parts.scheme, old_parts.hostname, old_parts.port) == (
                new_parts.scheme,
                new_parts.hostname,
                new_parts.port,
            )
            if not same:
                for key in list(new.headers):
                    if key.lower() == "authorization":
                        del new.headers[key]
        return new


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class _ReadFailed(Exception):
    """The source broke off mid-body: the network, not the archive or the disk."""


# What consumes a body instead of writing it to a file: (read, total or None, progress) ->
# (sha256 of the body, bytes read). Reads that fail raise _ReadFailed.
Sink = Callable[[Callable[[int], bytes], int | None, Progress], tuple[str, int]]


def _http_attempt(
    url: str,
    headers: dict[str, str],
    tmp: Path,
    timeout: float,
    show: str,
    meter: Meter,
    sink: Sink | None = None,
) -> tuple[str, int]:
    opener = urllib.request.build_opener(_SameOriginAuthRedirect())
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        code = e.code
        e.close()
        if code >= 500 or code in RETRYABLE_STATUS:
            raise _Retryable(f"HTTP {code} {e.reason}", _retry_after(e.headers)) from e
        hint = {
            401: f" (check {TOKEN_ENV} or {USERNAME_ENV}/{PASSWORD_ENV})",
            403: f" (check {TOKEN_ENV} or {USERNAME_ENV}/{PASSWORD_ENV})",
            404: " (not found)",
        }.get(code, "")
        raise FetchError(f"{show}: HTTP {code} {e.reason}{hint}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise FetchError(f"{show}: TLS certificate verification failed: {e.reason}") from e
        raise _Retryable(f"cannot connect: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        # Resets, timeouts, TLS errors mid-handshake: the network, not the request.
        raise _Retryable(f"{type(e).__name__}: {first_line(e)}") from e

    with response:
        length = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding") not in (None, "identity")
        total = int(length) if length and length.isdigit() and not encoded else None
        label = Path(urllib.parse.urlsplit(url).path).name or "model"
        if sink is not None:
            got = [0]

            def read(n: int) -> bytes:
                try:
                    chunk = response.read(n)
                except (OSError, http.client.HTTPException) as e:
                    raise _ReadFailed(f"{type(e).__name__}: {first_line(e)}") from e
                # http.client ends a body cut short with b"", not an error: a sink reading
                # as it goes (tarfile) would take it for a truncated archive.
                if not chunk and n and total is not None and got[0] < total:
                    raise _ReadFailed(f"connection closed after {got[0]} of {total} bytes")
                got[0] += len(chunk)
                return chunk

            try:
                with meter(label, total) as progress:
                    digest, size = sink(read, total, progress)
            except _ReadFailed as e:
                raise _Retryable(f"download interrupted: {e}") from e
            if total is not None and size != total:
                raise _Retryable(f"connection closed after {size} of {total} bytes")
            return digest, size
        try:
            out = open(tmp, "wb")  # noqa: SIM115 - closed below; open errors are final
        except OSError as e:
            raise FetchError(f"DEST: cannot write to {tmp.parent}: {e.strerror or e}") from e
        with out, meter(label, total) as progress:
            try:
                digest, size = _copy_stream(response.read, out, progress)
            except (OSError, http.client.HTTPException) as e:
                # Write errors already became FetchError in _copy_stream; what is left is
                # the connection dropping, timing out or breaking TLS mid-body.
                raise _Retryable(
                    f"download interrupted: {type(e).__name__}: {first_line(e)}"
                ) from e
    if total is not None and size != total:
        raise _Retryable(f"connection closed after {size} of {total} bytes")
    return digest, size


def _fetch_http(
    uri: str,
    tmp: Path,
    *,
    env: Mapping[str, str],
    retries: int,
    timeout: float,
    backoff: float,
    meter: Meter,
    log: Log,
    sink: Sink | None = None,
) -> tuple[str, int]:
    show = redact(uri)
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise FetchError(f"URI: expected {parts.scheme}://host/path, got {show!r}")
    # userinfo must not reach http.client (it would be parsed as host:port).
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else host
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    authorization = auth_header(env, uri)
    if authorization:
        headers["Authorization"] = authorization

    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return _http_attempt(url, headers, tmp, timeout, show, meter, sink)
        except _Retryable as e:
            if attempt == attempts:
                raise FetchError(f"{show}: giving up after {attempts} attempt(s): {e}") from e
            delay = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
            if e.retry_after is not None:
                delay = min(MAX_BACKOFF_S * 2, max(delay, e.retry_after))
            log(f"fetch {show}: attempt {attempt}/{attempts} failed ({e}); retrying in {delay:g}s")
            time.sleep(delay)
    raise AssertionError("unreachable")


def _local_path(uri: str) -> Path:
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(
                f"URI: file:// URIs must be local (file:///path), got host {parts.netloc!r}"
            )
        return Path(urllib.request.url2pathname(parts.path))
    return Path(uri)


def _fetch_local(src: Path, tmp: Path, *, meter: Meter) -> tuple[str, int]:
    try:
        source = open(src, "rb")  # noqa: SIM115 - closed below, errors mapped first
    except FileNotFoundError:
        raise FetchError(f"URI: {src} does not exist") from None
    except IsADirectoryError:
        raise FetchError(f"URI: {src} is a directory, expected a model file") from None
    except OSError as e:
        raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e
    with source, open(tmp, "wb") as out, meter(src.name, src.stat().st_size) as progress:
        try:
            return _copy_stream(source.read, out, progress)
        except OSError as e:
            raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest(), path.stat().st_size


def _fetch_s3(
    uri: str, tmp: Path, *, env: Mapping[str, str], retries: int, timeout: float, meter: Meter
) -> tuple[str, int]:
    """s3://bucket/key with boto3 (optional): credentials and region from the AWS_* env."""
    parts = urllib.parse.urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise FetchError(
            f"URI: expected s3://bucket/key (or s3://bucket/prefix/ for a set), got {uri!r}"
        )
    client = _s3_client(uri, env=env, retries=retries, timeout=timeout)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        body = obj["Body"]
        with (
            body,
            open(tmp, "wb") as out,
            meter(Path(key).name, obj.get("ContentLength")) as progress,
        ):
            return _copy_stream(body.read, out, progress)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise FetchError(f"{uri}: S3 error {code}: {first_line(e)}") from e
    except BotoCoreError as e:
        raise FetchError(f"{uri}: S3 request failed: {first_line(e)}") from e


def _s3_client(uri: str, *, env: Mapping[str, str], retries: int, timeout: float) -> Any:
    """A boto3 S3 client with our retries and timeouts; credentials from the AWS_* env."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise FetchError(
            f"{uri}: s3:// URIs need boto3, which is not installed (pip install boto3), "
            f"or use an https presigned URL"
        ) from None
    config = Config(
        retries={"max_attempts": retries + 1, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    # Older boto3 ignores AWS_ENDPOINT_URL (MinIO, Ceph); pass it on explicitly. Keys and
    # region from `env` when it has them (it is os.environ but in tests); otherwise boto3's
    # own chain (config files, web identity, instance roles) decides.
    return boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        config=config,
    )


def _fetch_s3_prefix(
    uri: str,
    tree: Path,
    *,
    env: Mapping[str, str],
    retries: int,
    timeout: float,
    backoff: float,
    meter: Meter,
    log: Log,
) -> str:
    """Every object under s3://bucket/prefix/ into `tree`; returns the set digest.

    The listing is planned (fetch_set.plan_prefix: every key's path checked) before any
    byte is written, and each object is hashed as it streams, so the set digest costs no
    second read. An object whose body breaks off is fetched again, up to `retries` times
    (botocore retries the requests themselves, not a body cut short).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    show = redact(uri)
    bucket_prefix = fetch_set.s3_prefix(uri)
    assert bucket_prefix is not None
    bucket, prefix = bucket_prefix
    client = _s3_client(uri, env=env, retries=retries, timeout=timeout)
    try:
        listed = [
            (obj["Key"], int(obj["Size"]))
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for obj in page.get("Contents", [])
        ]
        plan = fetch_set.plan_prefix(prefix, listed)
    except fetch_set.SetError as e:
        raise FetchError(f"{show}: {e}") from e
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        raise FetchError(f"{show}: S3 error {code} listing the prefix: {first_line(e)}") from e
    except BotoCoreError as e:
        raise FetchError(f"{show}: S3 listing failed: {first_line(e)}") from e

    hashes: list[tuple[str, str]] = []
    label = PurePosixPath(prefix.rstrip("/")).name or bucket
    total = sum(size for _, _, size in plan)
    with meter(f"{label} ({len(plan)} objects)", total) as progress:
        for key, rel, size in plan:
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, retries + 2):
                start = progress.done
                try:
                    obj = client.get_object(Bucket=bucket, Key=key)
                    with obj["Body"] as body, open(target, "wb") as out:
                        digest, got = _copy_stream(body.read, out, progress)
                    if got != size:
                        raise _Retryable(f"s3 key {key!r}: got {got} of {size} bytes")
                    break
                except ClientError as e:
                    code = e.response.get("Error", {}).get("Code", "?")
                    raise FetchError(
                        f"{show}: S3 error {code} on key {key!r}: {first_line(e)}"
                    ) from e
                except (_Retryable, BotoCoreError) as e:
                    # A body cut short or timed out mid-read (botocore wraps urllib3's).
                    progress.add(start - progress.done)  # the part is fetched again
                    if attempt > retries:
                        raise FetchError(
                            f"{show}: s3 key {key!r}: giving up after {attempt} attempt(s): "
                            f"{first_line(e)}"
                        ) from e
                    delay = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
                    log(
                        f"fetch {show}: key {key!r}: attempt {attempt}/{retries + 1} failed "
                        f"({e}); retrying in {delay:g}s"
                    )
                    time.sleep(delay)
            hashes.append((rel, digest))
    return fetch_set.digest_of(hashes)


def verify_onnx(path: Path, show: str) -> None:
    """Fail unless `path` is a loadable ONNX model (onnx.checker if available, else ORT).

    The runtime image has onnxruntime but not onnx, so the fallback is what runs in the
    init container: if onnxruntime can build a session, the runtime will be able to too.
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            onnx.checker.check_model(str(path))
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # the error comes back to us; no C++ log spam
            # Only whether it loads: no optimizing, and external data mapped rather than
            # packed into a copy, so checking a 20 GB model does not need 20 GB of memory.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ImportError as e:
        raise FetchError(
            f"{show}: cannot check the model, neither onnx nor onnxruntime is installed"
        ) from e
    except Exception as e:
        # The checkers name the temp file, which no longer exists when the user reads this.
        detail = first_line(e).replace(str(path), "the downloaded file")
        raise FetchError(f"{show} is not a loadable ONNX model: {detail}") from e


def fetch_model(
    uri: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT_S,
    backoff: float = DEFAULT_BACKOFF_S,
    progress: bool | None = None,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S,
    check_onnx: bool = True,
    env: Mapping[str, str] | None = None,
    log: Log = _stderr,
    max_unpacked_bytes: int | None = None,
    single_file: bool = False,
) -> FetchResult:
    """Fetch `uri` to `dest` atomically, verify it, and say what was written.

    A directory, an archive or an s3 prefix (see fetch_set) lands as a directory at DEST;
    anything else is one file. Progress lines (tools/progress.py) go to `log` every
    `progress_interval` seconds; `progress=False` or an interval of 0 turns them off.
    `env` defaults to os.environ (tests pass their own). Raises FetchError with a one-line
    message.
    """
    env = os.environ if env is None else env
    expected = normalize_sha256(sha256)
    if retries < 0:
        raise FetchError(f"--retries: expected an integer >= 0, got {retries}")
    if timeout <= 0:
        raise FetchError(f"--timeout: expected seconds > 0, got {timeout}")
    if progress_interval < 0:
        raise FetchError(f"--progress-interval: expected seconds >= 0, got {progress_interval}")
    interval = 0.0 if progress is False else progress_interval
    meter = functools.partial(Progress, log=log, interval=interval)
    if not single_file and uri:
        kind = _set_kind(uri)
        if kind is not None:
            return _fetch_set_model(
                kind,
                uri,
                Path(dest),
                expected,
                max_unpacked_bytes=max_unpacked_bytes,
                check_onnx=check_onnx,
                fetch_kwargs={
                    "retries": retries,
                    "timeout": timeout,
                    "backoff": backoff,
                    "progress": progress,
                    "progress_interval": progress_interval,
                    "env": env,
                    "log": log,
                },
                meter=meter,
            )
    if not uri:
        raise FetchError("URI: expected a model URI or path, got an empty string")
    show = redact(uri)
    target = resolve_dest(dest)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    # One letter before ':' is a Windows drive, not a scheme.
    if len(scheme) == 1:
        scheme = ""

    if scheme in ("", "file"):
        src = _local_path(uri)
        if src.exists() and target.exists() and src.resolve() == target.resolve():
            # Already in place (e.g. a read-only PVC): verify, never rewrite it.
            digest, size = _hash_file(src)
            _check_digest(show, target, expected, digest)
            if check_onnx:
                verify_onnx(src, show)
            return FetchResult(target, digest, size, copied=False)

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

    try:
        with atomic_target(target) as tmp:
            if scheme in ("http", "https"):
                digest, size = _fetch_http(
                    uri,
                    tmp,
                    env=env,
                    retries=retries,
                    timeout=timeout,
                    backoff=backoff,
                    meter=meter,
                    log=log,
                )
            elif scheme == "s3":
                digest, size = _fetch_s3(
                    uri, tmp, env=env, retries=retries, timeout=timeout, meter=meter
                )
            else:
                digest, size = _fetch_local(_local_path(uri), tmp, meter=meter)
            _check_digest(show, target, expected, digest)
            if check_onnx:
                verify_onnx(tmp, show)
    except OSError as e:
        # Creating/renaming the temp file in DEST's directory (read-only, full, ...).
        raise FetchError(f"DEST: cannot write {target}: {e.strerror or e}") from e
    return FetchResult(target, digest, size, copied=True)


def _set_kind(uri: str) -> str | None:
    """'archive' or 'dir' for a multi-file URI, None for a single file."""
    if fetch_set.archive_kind(uri):
        return "archive"
    if fetch_set.s3_prefix(uri) is not None:
        return "prefix"
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:
        try:
            return "dir" if _local_path(uri).is_dir() else None
        except FetchError:
            return None
    return None


def _fetch_set_model(
    kind: str,
    uri: str,
    dest: Path,
    expected: str | None,
    *,
    max_unpacked_bytes: int | None,
    check_onnx: bool,
    fetch_kwargs: dict[str, Any],
    meter: Meter,
) -> FetchResult:
    """A directory, archive or prefix built beside DEST, checked, then renamed into place."""
    show = redact(uri)
    if max_unpacked_bytes is not None and max_unpacked_bytes <= 0:
        raise FetchError(f"--max-unpacked-bytes: expected bytes > 0, got {max_unpacked_bytes}")
    if kind == "dir":
        src = _local_path(uri)
        if dest.exists() and src.resolve() == dest.resolve():
            digest = _set_digest(src, show)
            _check_digest(show, dest, expected, digest)
            return FetchResult(dest, digest, _tree_size(dest), copied=False)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as e:
        raise FetchError(f"DEST: cannot write beside {dest}: {e.strerror or e}") from e
    tree = work / "tree"
    try:
        tree.mkdir()
        if kind == "archive" and _streams_tar(uri):
            digest = _stream_tar(
                uri, tree, max_unpacked_bytes, meter=meter, fetch_kwargs=fetch_kwargs
            )
            _check_digest(show, dest, expected, digest)
        elif kind == "archive":
            archive = work / "archive"
            got = fetch_model(
                uri, archive, expected, check_onnx=False, single_file=True, **fetch_kwargs
            )
            digest = got.sha256
            limit = max_unpacked_bytes or fetch_set.DEFAULT_UNPACK_FACTOR * max(got.size, 1)
            extract = (
                fetch_set.extract_zip
                if fetch_set.archive_kind(uri) == "zip"
                else fetch_set.extract_tar
            )
            try:
                extract(archive, tree, limit)
            except fetch_set.SetError as e:
                raise FetchError(f"{show}: {e}") from e
            archive.unlink()
        elif kind == "prefix":
            digest = _fetch_s3_prefix(
                uri,
                tree,
                env=fetch_kwargs["env"],
                retries=fetch_kwargs["retries"],
                timeout=fetch_kwargs["timeout"],
                backoff=fetch_kwargs["backoff"],
                meter=meter,
                log=fetch_kwargs["log"],
            )
            _check_digest(show, dest, expected, digest)
        else:
            src = _local_path(uri)
            try:
                total = fetch_set.tree_size(src)
                with meter(src.name or str(src), total) as progress:
                    hashes = fetch_set.copy_tree(src, tree, progress.add)
            except fetch_set.SetError as e:
                raise FetchError(f"{show}: {e}") from e
            digest = fetch_set.digest_of(hashes)
            _check_digest(show, dest, expected, digest)
        if check_onnx:
            model = fetch_set.find_model_file(tree)
            if model is None:
                raise FetchError(
                    f"{show}: expected model.onnx, model.onnx/model.onnx or exactly one "
                    f".onnx file in the set, found none that qualifies"
                )
            try:
                # What the runtime will refuse (serving/external_data.py), said at fetch.
                check_external_data(model)
            except ExternalDataError as e:
                raise FetchError(f"{show}: {str(e).replace(str(tree), 'DEST')}") from e
            verify_onnx(model, show)
        size = _tree_size(tree)
        fetch_set.publish_dir(tree, dest)
    except OSError as e:
        raise FetchError(f"DEST: cannot write {dest}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FetchResult(dest, digest, size, copied=True)


def _streams_tar(uri: str) -> bool:
    """A tar over http(s) or on local disk is unpacked as it is read; zip needs its central
    directory (at the end) first, and an s3 archive still lands whole before unpacking."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    local = scheme in ("", "file") or len(scheme) == 1
    return fetch_set.archive_kind(uri) == "tar" and (local or scheme in ("http", "https"))


def _stream_tar(
    uri: str,
    tree: Path,
    max_unpacked_bytes: int | None,
    *,
    meter: Meter,
    fetch_kwargs: dict[str, Any],
) -> str:
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
        seen = [0]

        class Tee:
            """The body as tarfile reads it, hashed (`digest`, set below) and counted."""

            digest: fetch_set.BackgroundHash

            def read(self, n: int = -1) -> bytes:
                chunk = read(CHUNK if n is None or n < 0 else n)
                self.digest.update(chunk)
                seen[0] += len(chunk)
                progress.add(len(chunk))
                return chunk

        limit = max_unpacked_bytes
        try:
            if limit is None and total is None:
                archive = tree.parent / "archive"
                with open(archive, "wb") as out:
                    hexdigest, size = _copy_stream(read, out, progress)
                limit = fetch_set.DEFAULT_UNPACK_FACTOR * max(size, 1)
                fetch_set.extract_tar(archive, tree, limit)
                archive.unlink()
                return hexdigest, size
            if limit is None:
                limit = fetch_set.DEFAULT_UNPACK_FACTOR * max(total or 0, 1)
            tee = Tee()
            with fetch_set.BackgroundHash() as tee.digest:
                fetch_set.extract_tar_stream(tee, tree, limit)  # type: ignore[arg-type]
                while tee.read(CHUNK):  # what follows the last member (padding) is hashed
                    pass
        except fetch_set.SetError as e:
            raise FetchError(f"{show}: {e}") from e
        except OSError as e:  # reads raise _ReadFailed: this is the disk
            raise FetchError(f"DEST: cannot write {tree.parent}: {e.strerror or e}") from e
        return tee.digest.hexdigest(), seen[0]

    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        digest, _ = _fetch_http(
            uri,
            tree.parent / "unused",
            env=fetch_kwargs["env"],
            retries=fetch_kwargs["retries"],
            timeout=fetch_kwargs["timeout"],
            backoff=fetch_kwargs["backoff"],
            meter=meter,
            log=fetch_kwargs["log"],
            sink=sink,
        )
        return digest
    src = _local_path(uri)
    try:
        source = open(src, "rb")  # noqa: SIM115 - closed below, errors mapped first
    except FileNotFoundError:
        raise FetchError(f"URI: {src} does not exist") from None
    except OSError as e:
        raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e

    def read_local(n: int) -> bytes:
        try:
            return source.read(n)
        except OSError as e:
            raise FetchError(f"URI: cannot read {src}: {e.strerror or e}") from e

    with source, meter(src.name, os.fstat(source.fileno()).st_size) as progress:
        digest, _ = sink(read_local, os.fstat(source.fileno()).st_size, progress)
    return digest


def _set_digest(root: Path, show: str) -> str:
    try:
        return fetch_set.set_digest(root)
    except fetch_set.SetError as e:
        raise FetchError(f"{show}: {e}") from e


def _tree_size(root: Path) -> int:
    return fetch_set.tree_size(root)


def _check_digest(show: str, target: Path, expected: str | None, actual: str) -> None:
    if expected is not None and actual != expected:
        raise FetchError(
            f"{show}: sha256 mismatch: expected {expected}, got {actual}; {target} was not written"
        )


def fetch(
    uri: str,
    dest: str | Path,
    sha256: str | None = None,
    **kwargs: Any,
) -> Path:
    """Fetch `uri` to `dest` (see fetch_model for the options); return the model's path."""
    return fetch_model(uri, dest, sha256, **kwargs).path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri",
        metavar="URI",
        help="https://, http://, file://, s3:// (needs boto3) or a local path; a directory, "
        "s3://bucket/prefix/ or .tar/.tar.gz/.tgz/.zip archive for a multi-file model",
    )
    parser.add_argument(
        "dest",
        metavar="DEST",
        help=f"target file, or a directory to write {DEFAULT_FILENAME} into; for a "
        "directory, archive or s3 prefix URI, the directory the set lands in",
    )
    parser.add_argument(
        "--sha256",
        metavar="HEX",
        help="expected sha256 of the model file or archive; for a directory or prefix, "
        "its set digest (modelservice digest PATH)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="extra attempts after connection errors, timeouts and 5xx (not 4xx)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait on connect or on any read before the attempt fails",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=DEFAULT_BACKOFF_S,
        metavar="S",
        help="first retry delay; doubles on each retry (capped at 30s)",
    )
    parser.add_argument(
        "--max-unpacked-bytes",
        type=int,
        default=None,
        metavar="N",
        help="refuse an archive that unpacks past N bytes (default 4x the archive's size)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_PROGRESS_INTERVAL_S,
        metavar="S",
        help="seconds between progress lines on stderr (bytes, total, rate, ETA); 0: none "
        f"(default {DEFAULT_PROGRESS_INTERVAL_S:g})",
    )
    parser.add_argument(
        "--no-onnx-check",
        dest="check_onnx",
        action="store_false",
        help="skip checking that the file is a loadable ONNX model",
    )
    parser.epilog = (
        f"credentials (http/https): {TOKEN_ENV} (bearer) or {USERNAME_ENV} and "
        f"{PASSWORD_ENV} (basic); s3: the AWS_* environment variables"
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = fetch_model(
            args.uri,
            args.dest,
            args.sha256,
            retries=args.retries,
            timeout=args.timeout,
            backoff=args.backoff,
            check_onnx=args.check_onnx,
            max_unpacked_bytes=args.max_unpacked_bytes,
            progress_interval=args.progress_interval,
        )
    except FetchError as e:
        print(f"modelservice fetch: error: {e}", file=sys.stderr)
        return 1
    verb = "fetched" if result.copied else "verified in place"
    print(
        f"{verb} {redact(args.uri)} -> {result.path} ({result.size} bytes, sha256 {result.sha256})"
    )
    return 0
