"""`modelservice fetch` against a real HTTP server on 127.0.0.1 (and real files).

The server is scripted per path: each request takes the next reply in the list (the last
one repeats), and every request's path and headers are recorded, so tests can count
retries and check exactly which credentials were sent where.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from modelservice_cli import main as cli
from modelservice_runtime.fetch import FetchError, fetch, fetch_model, redact
from modelservice_runtime.fetch.progress import PREFIX as PROGRESS

from tests.needs import needed

ROOT = Path(__file__).resolve().parents[2]
NOT_ONNX = b"<html><body>Sign in to continue</body></html>"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # a Content-Length larger than body = truncated
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class ScriptedServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.seen.append(Seen(self.path, dict(self.headers.items())))
                    replies = server.routes.get(self.path.split("?")[0], [Reply(404)])
                    reply = replies.pop(0) if len(replies) > 1 else replies[0]
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                length = reply.declared_length or len(reply.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                # the client may have given up already (timeout test)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def route(self, path: str, *replies: Reply) -> str:
        self.routes[path] = list(replies)
        return self.url(path)

    def hits(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path.split("?")[0] == path]


@contextlib.contextmanager
def running(s: ScriptedServer) -> Iterator[ScriptedServer]:
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(timeout=10)
        assert not s.thread.is_alive(), "scripted HTTP server thread did not stop within 10s"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with running(ScriptedServer()) as s:
        yield s


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI; needed: a failure in CI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        needed("openssl CLI not found; needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def model_bytes(mlp_onnx: Path) -> bytes:
    return mlp_onnx.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def quiet(_: str) -> None:
    pass


# --- http(s) -------------------------------------------------------------------------


def test_http_success_with_sha256_into_directory(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route("/models/mlp.onnx", Reply(body=model_bytes))
    previous = os.umask(0o027)  # the mode must follow the umask, as `open` would make it
    try:
        result = fetch_model(url, tmp_path, sha256=sha(model_bytes).upper(), env={}, log=quiet)
    finally:
        os.umask(previous)
    assert result.path == tmp_path / "model.onnx"
    assert result.path.read_bytes() == model_bytes
    assert result.sha256 == sha(model_bytes) and result.size == len(model_bytes)
    assert len(server.hits("/models/mlp.onnx")) == 1
    assert leftovers(tmp_path) == []
    # 0666 & ~umask, not mkstemp's 0600: a runtime running as another uid (its group) reads it
    assert result.path.stat().st_mode & 0o777 == 0o640, oct(result.path.stat().st_mode)


def test_sha256_mismatch_names_both_hashes_and_writes_nothing(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route("/m.onnx", Reply(body=model_bytes))
    wrong = "0" * 64
    dest = tmp_path / "model.onnx"
    with pytest.raises(FetchError) as info:
        fetch(url, dest, sha256=wrong, env={}, log=quiet)
    message = str(info.value)
    assert f"expected {wrong}" in message and f"got {sha(model_bytes)}" in message
    assert "sha256 mismatch" in message
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_failure_leaves_existing_dest_untouched(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    """Atomicity: a good model already at DEST survives a failed fetch byte for byte."""
    dest = tmp_path / "model.onnx"
    dest.write_bytes(model_bytes)
    url = server.route("/m.onnx", Reply(body=NOT_ONNX))
    with pytest.raises(FetchError, match="is not a loadable ONNX model"):
        fetch(url, dest, env={}, log=quiet)
    assert dest.read_bytes() == model_bytes
    assert leftovers(tmp_path) == []
    # Interrupted mid-body on every attempt: still nothing partial.
    cut = server.route("/cut.onnx", Reply(body=model_bytes[:1000], declared_length=5000))
    with pytest.raises(FetchError, match="connection closed after 1000 of 5000 bytes"):
        fetch(cut, dest, env={}, retries=1, backoff=0.01, log=quiet)
    assert dest.read_bytes() == model_bytes
    assert leftovers(tmp_path) == []


def test_404_fails_at_once(server: ScriptedServer, tmp_path: Path) -> None:
    url = server.url("/missing.onnx")
    with pytest.raises(FetchError, match=r"HTTP 404 .*\(not found\)"):
        fetch(url, tmp_path, env={}, retries=3, backoff=0.01, log=quiet)
    assert len(server.hits("/missing.onnx")) == 1, "4xx must not be retried"
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_fail_at_once_with_a_hint(
    server: ScriptedServer, tmp_path: Path, status: int
) -> None:
    url = server.route("/private.onnx", Reply(status))
    with pytest.raises(FetchError, match=f"HTTP {status} .*check MODELSERVICE_FETCH_TOKEN"):
        fetch(url, tmp_path, env={}, retries=3, backoff=0.01, log=quiet)
    assert len(server.hits("/private.onnx")) == 1


def test_500_then_success_is_retried(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route("/flaky.onnx", Reply(500), Reply(502), Reply(body=model_bytes))
    logs: list[str] = []
    path = fetch(url, tmp_path, env={}, retries=3, backoff=0.01, log=logs.append)
    assert path.read_bytes() == model_bytes
    assert len(server.hits("/flaky.onnx")) == 3
    logs = [line for line in logs if not line.startswith(PROGRESS)]
    assert len(logs) == 2
    assert "attempt 1/4 failed (HTTP 500" in logs[0] and "retrying in" in logs[0]
    assert "attempt 2/4 failed (HTTP 502" in logs[1]


def test_persistent_5xx_gives_up_after_retries(server: ScriptedServer, tmp_path: Path) -> None:
    url = server.route("/down.onnx", Reply(503, headers={"Retry-After": "0"}))
    with pytest.raises(FetchError, match=r"giving up after 3 attempt\(s\): HTTP 503"):
        fetch(url, tmp_path, env={}, retries=2, backoff=0.01, log=quiet)
    assert len(server.hits("/down.onnx")) == 3


def test_truncated_body_then_success_is_retried(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route(
        "/m.onnx",
        Reply(body=model_bytes[:4096], declared_length=len(model_bytes)),
        Reply(body=model_bytes),
    )
    path = fetch(url, tmp_path, sha256=sha(model_bytes), env={}, backoff=0.01, log=quiet)
    assert path.read_bytes() == model_bytes
    assert len(server.hits("/m.onnx")) == 2


def test_read_timeout_is_retried(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route("/slow.onnx", Reply(body=model_bytes, delay_s=1.5), Reply(body=model_bytes))
    logs: list[str] = []
    path = fetch(url, tmp_path, env={}, timeout=0.3, backoff=0.01, log=logs.append)
    assert path.read_bytes() == model_bytes
    assert len(server.hits("/slow.onnx")) == 2
    assert "attempt 1/4 failed" in logs[0]


def test_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs: list[str] = []
    with pytest.raises(FetchError, match=r"giving up after 2 attempt\(s\): cannot connect"):
        fetch(
            f"http://127.0.0.1:{port}/m.onnx",
            tmp_path,
            env={},
            retries=1,
            backoff=0.01,
            log=logs.append,
        )
    assert len(logs) == 1


def test_non_onnx_file_is_refused(server: ScriptedServer, tmp_path: Path) -> None:
    url = server.route("/login", Reply(body=NOT_ONNX, headers={"Content-Type": "text/html"}))
    with pytest.raises(FetchError) as info:
        fetch(url, tmp_path, env={}, log=quiet)
    assert str(info.value).startswith(f"{url} is not a loadable ONNX model: ")
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("checker", ["onnx", "onnxruntime"])
@pytest.mark.parametrize("kind", ["html", "truncated model"])
def test_corrupt_or_non_onnx_file_is_refused(
    server: ScriptedServer,
    model_bytes: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    checker: str,
    kind: str,
) -> None:
    """The runtime image has onnxruntime but not onnx: the fallback check must work too."""
    if checker == "onnxruntime":
        monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    body = NOT_ONNX if kind == "html" else model_bytes[: len(model_bytes) // 2]
    url = server.route("/m.onnx", Reply(body=body))
    with pytest.raises(FetchError, match=f"^{url} is not a loadable ONNX model: .+") as info:
        fetch(url, tmp_path, env={}, log=quiet)
    assert ".part" not in str(info.value), "the message must not name the vanished temp file"
    assert not (tmp_path / "model.onnx").exists()
    assert leftovers(tmp_path) == []


def test_valid_model_passes_without_onnx_package(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    url = server.route("/m.onnx", Reply(body=model_bytes))
    assert fetch(url, tmp_path, env={}, log=quiet).read_bytes() == model_bytes


def test_https_verifies_the_certificate(
    tls_cert: tuple[Path, Path],
    model_bytes: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = tls_cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with running(ScriptedServer(tls=context)) as server:
        url = server.route("/m.onnx", Reply(body=model_bytes))
        # Unknown CA: a permanent error, not retried.
        with pytest.raises(FetchError, match="TLS certificate verification failed"):
            fetch(url, tmp_path / "a.onnx", env={}, retries=3, backoff=0.01, log=quiet)
        assert not (tmp_path / "a.onnx").exists()
        # Trusting the CA (as a cluster would through SSL_CERT_FILE) makes it work.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        token = {"MODELSERVICE_FETCH_TOKEN": "tok-tls"}
        path = fetch(url, tmp_path / "b.onnx", sha256=sha(model_bytes), env=token, log=quiet)
        assert path.read_bytes() == model_bytes
        assert server.hits("/m.onnx")[-1].headers["Authorization"] == "Bearer tok-tls"


# --- credentials -----------------------------------------------------------------------


def test_bearer_token_from_env(server: ScriptedServer, model_bytes: bytes, tmp_path: Path) -> None:
    url = server.route("/m.onnx", Reply(body=model_bytes))
    fetch(url, tmp_path, env={"MODELSERVICE_FETCH_TOKEN": "tok-123"}, log=quiet)
    assert server.hits("/m.onnx")[0].headers["Authorization"] == "Bearer tok-123"


def test_basic_auth_from_env(server: ScriptedServer, model_bytes: bytes, tmp_path: Path) -> None:
    url = server.route("/m.onnx", Reply(body=model_bytes))
    env = {"MODELSERVICE_FETCH_USERNAME": "alice", "MODELSERVICE_FETCH_PASSWORD": "p@ss:w"}
    fetch(url, tmp_path, env=env, log=quiet)
    expected = "Basic " + base64.b64encode(b"alice:p@ss:w").decode()
    assert server.hits("/m.onnx")[0].headers["Authorization"] == expected


def test_basic_auth_from_url_userinfo(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.route("/m.onnx", Reply(body=model_bytes))
    url = f"http://bob:hunter2@127.0.0.1:{server.port}/m.onnx"
    fetch(url, tmp_path, env={}, log=quiet)
    expected = "Basic " + base64.b64encode(b"bob:hunter2").decode()
    assert server.hits("/m.onnx")[0].headers["Authorization"] == expected
    assert "hunter2" not in redact(url) and "bob" not in redact(url)


def test_username_without_password_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="MODELSERVICE_FETCH_PASSWORD: expected both"):
        fetch("http://127.0.0.1:1/m.onnx", tmp_path, env={"MODELSERVICE_FETCH_USERNAME": "a"})


def test_no_auth_header_without_credentials(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    url = server.route("/m.onnx", Reply(body=model_bytes))
    fetch(url, tmp_path, env={}, log=quiet)
    assert "Authorization" not in server.hits("/m.onnx")[0].headers


def test_token_kept_on_same_host_redirect_dropped_on_other_host(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    server.route("/m.onnx", Reply(body=model_bytes))
    env = {"MODELSERVICE_FETCH_TOKEN": "tok-123"}
    same = server.route("/same", Reply(302, headers={"Location": server.url("/m.onnx")}))
    fetch(same, tmp_path / "a.onnx", env=env, log=quiet)
    assert server.hits("/m.onnx")[-1].headers.get("Authorization") == "Bearer tok-123"
    # "localhost" is a different origin than "127.0.0.1" (same server, as a CDN stand-in)
    other = server.route(
        "/other", Reply(302, headers={"Location": server.url("/m.onnx", host="localhost")})
    )
    fetch(other, tmp_path / "b.onnx", env=env, log=quiet)
    assert server.hits("/other")[0].headers.get("Authorization") == "Bearer tok-123"
    assert "Authorization" not in server.hits("/m.onnx")[-1].headers
    assert (tmp_path / "b.onnx").read_bytes() == model_bytes


def test_cli_never_prints_credentials(
    server: ScriptedServer,
    model_bytes: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODELSERVICE_FETCH_TOKEN", "tok-SECRET-1")
    server.route("/m.onnx", Reply(500), Reply(body=model_bytes))
    url = f"http://u:pw-SECRET-2@127.0.0.1:{server.port}/m.onnx?X-Amz-Signature=SECRET-3"
    rc = cli.main(["fetch", url, str(tmp_path), "--backoff", "0.01"])
    server.route("/denied.onnx", Reply(403))
    denied = f"http://127.0.0.1:{server.port}/denied.onnx?sig=SECRET-4"
    rc_denied = cli.main(["fetch", denied, str(tmp_path / "x.onnx")])
    out, err = capsys.readouterr()
    assert rc == 0 and rc_denied == 1
    assert "SECRET" not in out + err
    assert "fetched http://127.0.0.1:" in out and "/m.onnx?..." in out
    assert "modelservice fetch: error: http://127.0.0.1:" in err and "HTTP 403" in err


# --- local sources and options ---------------------------------------------------------


def test_file_uri_and_plain_path(mlp_onnx: Path, model_bytes: bytes, tmp_path: Path) -> None:
    a = fetch(mlp_onnx.as_uri(), tmp_path / "a.onnx", sha256=sha(model_bytes))
    b = fetch(str(mlp_onnx), tmp_path / "sub" / "dir" / "b.onnx")
    assert a.read_bytes() == b.read_bytes() == model_bytes
    assert leftovers(tmp_path) == []


def test_local_errors(mlp_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"URI: .*nope\.onnx does not exist"):
        fetch(str(tmp_path / "nope.onnx"), tmp_path / "out.onnx")
    (tmp_path / "empty").mkdir()  # a directory is a multi-file model now: it needs one
    with pytest.raises(FetchError, match=r"the set: no model file .* exactly one \.onnx file"):
        fetch(str(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(FetchError, match="file:// URIs must be local"):
        fetch("file://fileserver/share/m.onnx", tmp_path / "out.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(NOT_ONNX)
    with pytest.raises(FetchError, match=r"bad\.onnx is not a loadable ONNX model"):
        fetch(str(bad), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_same_source_and_dest_is_verified_in_place(mlp_onnx: Path, model_bytes: bytes) -> None:
    """A read-only PVC path: checked (sha256 + ONNX), never rewritten."""
    before = mlp_onnx.stat().st_mtime_ns
    result = fetch_model(str(mlp_onnx), mlp_onnx, sha256=sha(model_bytes))
    assert result.copied is False and result.sha256 == sha(model_bytes)
    assert mlp_onnx.stat().st_mtime_ns == before
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(str(mlp_onnx), mlp_onnx, sha256="f" * 64)
    assert mlp_onnx.read_bytes() == model_bytes


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/m.onnx", "URI: unsupported scheme 'gs'"),
        ("pvc://claim/m.onnx", "pvc:// is mounted by the operator"),
        ("", "URI: expected a model URI or path"),
        ("http:///m.onnx", "URI: expected http://host/path"),
        ("s3://bucket", "expected s3://bucket/key"),
    ],
)
def test_bad_uris(uri: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(FetchError, match=message):
        fetch(uri, tmp_path, env={})


def test_s3_without_boto3_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(FetchError, match=r"s3:// URIs need boto3, which is not installed"):
        fetch("s3://bucket/models/m.onnx", tmp_path, env={})


@pytest.mark.parametrize("bad", ["abc", "z" * 64, "0" * 63])
def test_bad_sha256_option(bad: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="--sha256: expected 64 hex characters"):
        fetch("/does/not/matter.onnx", tmp_path, sha256=bad)


def test_progress_lines_go_to_the_log_unless_turned_off(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lines, not a terminal bar: the init container's log is not a terminal (the lines'
    format and interval: tests/integration/test_fetch_progress.py)."""
    url = server.route("/m.onnx", Reply(body=model_bytes))
    logs: list[str] = []
    fetch(url, tmp_path / "a.onnx", env={}, log=logs.append, progress=False)
    assert logs == []
    fetch(url, tmp_path / "b.onnx", env={}, log=logs.append)
    size = len(model_bytes)
    (line,) = logs
    assert line.startswith(f"{PROGRESS}m.onnx: {size} of {size} bytes (") and "100%" in line
    assert capsys.readouterr().err == ""  # all of it went to `log`


@pytest.mark.slow
def test_console_script_exit_codes(
    server: ScriptedServer, model_bytes: bytes, tmp_path: Path
) -> None:
    exe = ROOT / ".cache" / "venv" / "bin" / "modelservice"
    if not exe.exists():
        needed(f"the console script {exe} is not installed (make venv)")
    url = server.route("/m.onnx", Reply(body=model_bytes))
    ok = subprocess.run(
        [str(exe), "fetch", url, str(tmp_path), "--sha256", sha(model_bytes)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "model.onnx").read_bytes() == model_bytes
    bad = subprocess.run(
        [str(exe), "fetch", server.url("/nope.onnx"), str(tmp_path / "n.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 404" in lines[0]
