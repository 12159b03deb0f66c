"""http(s):// sources: stdlib urllib, credentials from the environment, retried attempts.

Credentials: MODELSERVICE_FETCH_TOKEN (bearer) or MODELSERVICE_FETCH_USERNAME/PASSWORD
(basic), else the URL's userinfo. They are never printed, and the Authorization header is
dropped when a redirect leaves the original scheme, host and port. Connection errors,
timeouts, truncated bodies, 5xx, 408 and 429 are retried; other 4xx fail at once.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from modelservice_runtime.errors import first_line
from modelservice_runtime.fetch.base import (
    FetchError,
    ReadFailed,
    Retryable,
    Transfer,
    copy_stream,
    host_port,
    redact,
    with_retries,
)
from modelservice_runtime.fetch.progress import Progress

TOKEN_ENV = "MODELSERVICE_FETCH_TOKEN"
USERNAME_ENV = "MODELSERVICE_FETCH_USERNAME"
PASSWORD_ENV = "MODELSERVICE_FETCH_PASSWORD"
RETRYABLE_STATUS = frozenset({408, 429})  # plus every 5xx
USER_AGENT = "modelservice-fetch/0.1"
CREDENTIALS_HINT = f" (check {TOKEN_ENV} or {USERNAME_ENV}/{PASSWORD_ENV})"

# What consumes a body instead of writing it to a file: (read, total or None, progress) ->
# (sha256 of the body, bytes read). Reads that fail raise ReadFailed.
Sink = Callable[[Callable[[int], bytes], int | None, Progress], tuple[str, int]]


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


class SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
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


def request_for(
    uri: str, env: Mapping[str, str], *, method: str = "GET"
) -> tuple[urllib.request.OpenerDirector, urllib.request.Request]:
    """The opener (same-origin redirects) and the request for `uri`: userinfo moved out of
    the URL (http.client would parse it as host:port) into the Authorization header."""
    parts = urllib.parse.urlsplit(uri)
    url = urllib.parse.urlunsplit((parts.scheme, host_port(parts), parts.path, parts.query, ""))
    headers = {"User-Agent": USER_AGENT}
    if method == "GET":
        headers["Accept"] = "*/*"
    authorization = auth_header(env, uri)
    if authorization:
        headers["Authorization"] = authorization
    opener = urllib.request.build_opener(SameOriginAuthRedirect())
    return opener, urllib.request.Request(url, headers=headers, method=method)


def head(uri: str, *, env: Mapping[str, str], timeout: float) -> tuple[str | None, str | None]:
    """(strong ETag, Content-Length) from a HEAD request; (None, None) if it says none."""
    opener, request = request_for(uri, env, method="HEAD")
    try:
        with opener.open(request, timeout=timeout) as response:
            etag = response.headers.get("ETag")
            length = response.headers.get("Content-Length")
    except (urllib.error.URLError, OSError):
        return None, None  # the GET will say what is wrong, with retries
    if not etag or etag.startswith("W/"):
        return None, None  # a weak ETag promises equivalence, not the same bytes
    return etag, length


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _open(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    timeout: float,
    show: str,
) -> http.client.HTTPResponse:
    """The response, or Retryable (the network, 5xx, 408, 429), or FetchError (other 4xx,
    a certificate that does not verify)."""
    try:
        return opener.open(request, timeout=timeout)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as e:
        code = e.code
        e.close()
        if code >= 500 or code in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {code} {e.reason}", _retry_after(e.headers)) from e
        hint = {401: CREDENTIALS_HINT, 403: CREDENTIALS_HINT, 404: " (not found)"}.get(code, "")
        raise FetchError(f"{show}: HTTP {code} {e.reason}{hint}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise FetchError(f"{show}: TLS certificate verification failed: {e.reason}") from e
        raise Retryable(f"cannot connect: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        # Resets, timeouts, TLS errors mid-handshake: the network, not the request.
        raise Retryable(f"{type(e).__name__}: {first_line(e)}") from e


def _body_reader(response: http.client.HTTPResponse, total: int | None) -> Callable[[int], bytes]:
    """response.read that raises ReadFailed when the connection breaks or ends early."""
    got = [0]

    def read(n: int) -> bytes:
        try:
            chunk = response.read(n)
        except (OSError, http.client.HTTPException) as e:
            raise ReadFailed(f"{type(e).__name__}: {first_line(e)}") from e
        # http.client ends a body cut short with b"", not an error: a sink reading as it
        # goes (tarfile) would take it for a truncated archive.
        if not chunk and n and total is not None and got[0] < total:
            raise ReadFailed(f"connection closed after {got[0]} of {total} bytes")
        got[0] += len(chunk)
        return chunk

    return read


def file_sink(tmp: Path) -> Sink:
    """The sink that writes the body to `tmp` (open errors are final)."""

    def sink(
        read: Callable[[int], bytes], total: int | None, progress: Progress
    ) -> tuple[str, int]:
        try:
            out = open(tmp, "wb")  # noqa: SIM115 - closed below; open errors are final
        except OSError as e:
            raise FetchError(f"DEST: cannot write to {tmp.parent}: {e.strerror or e}") from e
        with out:
            return copy_stream(read, out, progress)

    return sink


def _attempt(uri: str, transfer: Transfer, sink: Sink) -> tuple[str, int]:
    """One GET of `uri` into `sink`; Retryable when another attempt may do better."""
    show = redact(uri)
    opener, request = request_for(uri, transfer.env)
    with _open(opener, request, transfer.timeout, show) as response:
        length = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding") not in (None, "identity")
        total = int(length) if length and length.isdigit() and not encoded else None
        label = Path(urllib.parse.urlsplit(uri).path).name or "model"
        try:
            with transfer.meter(label, total) as progress:
                digest, size = sink(_body_reader(response, total), total, progress)
        except ReadFailed as e:
            raise Retryable(f"download interrupted: {e}") from e
    if total is not None and size != total:
        raise Retryable(f"connection closed after {size} of {total} bytes")
    return digest, size


def fetch_http(uri: str, transfer: Transfer, sink: Sink) -> tuple[str, int]:
    """GET `uri` into `sink` (file_sink(path) for a file), retried; (sha256, bytes)."""
    show = redact(uri)
    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:
        raise FetchError(f"URI: expected {parts.scheme}://host/path, got {show!r}")
    return with_retries(lambda: _attempt(uri, transfer, sink), transfer, show=show)
