"""Every URI form of a multi-file model, on one small model with external data (about
2 MiB of weights in data/weights.bin beside model.onnx): a local directory (plain path and
file://), a pvc:// model (the claim is a mount in the pod: the operator's path under it,
re-rooted here), .tar/.tar.gz/.tgz/.zip over a real loopback HTTP server, and an
s3://bucket/prefix/ and an archive key from moto's standalone S3 server.

Each form lands at DEST with the source's set digest, is pinned by the documented digest
(the set digest for a directory or prefix, the archive's sha256 for an archive), and loads
in real onnxruntime, answering as numpy does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import re
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from modelservice_runtime.fetch import FetchError, fetch_model
from modelservice_runtime.fetch.trees import find_model_file, set_digest
from modelservice_runtime.serving.model import OnnxModel
from modelservice_runtime.settings import Settings

from tests import extdata
from tests.integration.conftest import wait_until
from tests.integration.s3server import S3, s3_server
from tests.loopback_http import loopback_server

BUCKET = "models"


@dataclass
class Sources:
    src: Path  # the model's directory
    archives: dict[str, Path]  # suffix -> archive of src
    http: str  # base URL of a loopback server over the archives' directory
    s3: S3


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_archives(src: Path, out: Path) -> dict[str, Path]:
    out.mkdir()
    archives = {}
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        path = out / f"ext{suffix}"
        with tarfile.open(path, mode) as tar:
            for p in sorted(src.rglob("*")):
                tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
        archives[suffix] = path
    with zipfile.ZipFile(out / "ext.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    archives[".zip"] = out / "ext.zip"
    return archives


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    with loopback_server(handler) as base:
        yield base


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sources]:
    root = tmp_path_factory.mktemp("uri-forms")
    src = root / "src"
    extdata.save_external(src)
    archives = make_archives(src, root / "served")
    with http_server(root / "served") as base, s3_server(root) as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        s3.upload_dir(BUCKET, "ext/", src)
        client.put_object(Bucket=BUCKET, Key="archives/ext.tgz", Body=archives[".tgz"].read_bytes())
        yield Sources(src, archives, base, s3)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)


def pvc_path(uri: str, mount: Path) -> str:
    """The path `modelservice fetch` gets for a pvc:// model: the operator's own rendering,
    with its mount point replaced by `mount` (the claim is a mount in the pod)."""
    from modelservice_operator import render
    from modelservice_operator.spec import ModelServiceSpec

    spec = ModelServiceSpec.model_validate({"model": {"uri": uri, "sha256": "0" * 64}})
    claim, path = spec.model.pvc_claim_and_path or ("", "")
    assert claim == "claim"
    cmd = render.fetch_command(spec)
    assert cmd is not None and cmd[:2] == ["modelservice", "fetch"]
    source = cmd[2]
    assert source == f"{render.PVC_MOUNT}/{path}", cmd
    return str(mount) + source[len(render.PVC_MOUNT) :]


FORMS = ["dir", "file-uri", "pvc", "http-.tar", "http-.tar.gz", "http-.tgz", "http-.zip",
         "s3-prefix", "s3-archive"]  # fmt: skip


def uri_and_pin(form: str, s: Sources, tmp: Path) -> tuple[str, str]:
    """The URI of `form` and the digest that pins it (docs/models.md, Integrity)."""
    digest = set_digest(s.src)
    if form == "dir":
        return str(s.src), digest
    if form == "file-uri":
        return f"file://{s.src}/", digest
    if form == "pvc":
        mount = tmp / "mnt"
        (mount / "models").mkdir(parents=True)
        shutil.copytree(s.src, mount / "models" / "ext")
        return pvc_path("pvc://claim/models/ext/", mount), digest
    if form.startswith("http-"):
        suffix = form[len("http-") :]
        return f"{s.http}/{s.archives[suffix].name}", sha256(s.archives[suffix])
    if form == "s3-prefix":
        return f"s3://{BUCKET}/ext/", digest
    if form == "s3-archive":
        return f"s3://{BUCKET}/archives/ext.tgz", sha256(s.archives[".tgz"])
    raise AssertionError(form)


@pytest.mark.parametrize("form", FORMS)
def test_every_uri_form_lands_whole_and_serves(form: str, sources: Sources, tmp_path: Path) -> None:
    uri, pin = uri_and_pin(form, sources, tmp_path)
    lines: list[str] = []
    dest = tmp_path / "dest" / "model"
    result = fetch_model(uri, dest, pin, env=sources.s3.env, log=lines.append)
    assert result.path == dest and result.copied
    assert result.sha256 == pin
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "data",
        "data/weights.bin",
        "model.onnx",
    ]
    assert set_digest(dest) == set_digest(sources.src)
    assert [p.name for p in dest.parent.iterdir()] == ["model"]  # no temp dir left beside it
    assert lines and lines[-1].startswith("progress ") and ", done in " in lines[-1]

    model_file = find_model_file(dest)
    assert model_file == dest / "model.onnx"
    model = OnnxModel(Settings(model_path=model_file, execution_provider="cpu"))
    x = np.random.default_rng(2).standard_normal((2, extdata.IN), dtype=np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], extdata.expected(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["dir", "http-.zip", "s3-prefix"])
def test_a_wrong_pin_leaves_dest_untouched(form: str, sources: Sources, tmp_path: Path) -> None:
    uri, _ = uri_and_pin(form, sources, tmp_path)
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "old").write_text("the previous set")
    with pytest.raises(FetchError, match=r"sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        fetch_model(uri, dest, "0" * 64, env=sources.s3.env, log=lambda _: None)
    assert [p.name for p in dest.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "mnt") == ["model"]


def test_an_http_directory_is_refused_with_what_to_use_instead(
    sources: Sources, tmp_path: Path
) -> None:
    """http(s) has no standard listing: a URL ending in / is not guessed at."""
    with pytest.raises(FetchError, match=re.escape("an http(s) directory cannot be listed")):
        fetch_model(f"{sources.http}/", tmp_path / "m", env={})
    assert not (tmp_path / "m").exists()


def test_s3_prefix_progress_counts_the_whole_set(sources: Sources, tmp_path: Path) -> None:
    lines: list[str] = []
    fetch_model(f"s3://{BUCKET}/ext/", tmp_path / "m", env=sources.s3.env, log=lines.append)
    total = sum(p.stat().st_size for p in sources.src.rglob("*") if p.is_file())
    assert lines[-1].startswith(f"progress ext (2 objects): {total} of {total} bytes (")


def test_s3_keys_that_would_leave_dest_are_refused_naming_the_key(
    sources: Sources, tmp_path: Path
) -> None:
    client = sources.s3.client()
    for prefix, key, rule in (
        ("dots/", "dots/../escape.bin", "'..' would leave DEST"),
        ("abs/", "abs//etc/cron.d/x", "absolute paths are refused"),
    ):
        sources.s3.upload_dir(BUCKET, prefix, sources.src)
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        listed = [
            o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
        ]
        assert key in listed, f"the S3 server changed the key {key!r}: {listed}"
        dest = tmp_path / prefix.strip("/")
        with pytest.raises(FetchError) as e:
            fetch_model(f"s3://{BUCKET}/{prefix}", dest, env=sources.s3.env, log=lambda _: None)
        assert f"s3 key {key!r}" in str(e.value) and rule in str(e.value)
        assert not dest.exists()
        assert not list(tmp_path.glob(f".{dest.name}*"))


def test_an_empty_prefix_is_an_error(sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"s3 prefix 'nothing/': no objects under it"):
        fetch_model(f"s3://{BUCKET}/nothing/", tmp_path / "m", env=sources.s3.env)


@contextlib.contextmanager
def cutting_proxy(upstream: str, cut_path: str) -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy in front of the S3 server that sends the first GET of `cut_path` with
    its full Content-Length but only half its body, then closes: a download broken off."""
    import http.client
    import urllib.parse

    up = urllib.parse.urlsplit(upstream)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
            conn.request(self.command, self.path, body, dict(self.headers.items()))
            reply = conn.getresponse()
            data = reply.read()
            path = self.path.split("?")[0]
            seen.append(f"{self.command} {path}")
            cut = self.command == "GET" and path == cut_path and seen.count(f"GET {path}") == 1
            self.send_response(reply.status)
            for key, value in reply.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if cut else data)
            if cut:
                self.close_connection = True
            conn.close()

        do_GET = do_PUT = do_HEAD = do_POST = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_server(Handler) as base:
        yield base, seen


def test_an_s3_object_cut_short_is_fetched_again(sources: Sources, tmp_path: Path) -> None:
    path = f"/{BUCKET}/ext/data/weights.bin"
    with cutting_proxy(sources.s3.endpoint, path) as (endpoint, seen):
        lines: list[str] = []
        env = {**sources.s3.env, "AWS_ENDPOINT_URL": endpoint}
        result = fetch_model(
            f"s3://{BUCKET}/ext/", tmp_path / "m", env=env, backoff=0.01, log=lines.append
        )
    assert seen.count(f"GET {path}") == 2, seen
    retries = [line for line in lines if "attempt" in line]
    assert len(retries) == 1 and "key 'ext/data/weights.bin': attempt 1/4 failed" in retries[0]
    assert result.sha256 == set_digest(sources.src) == set_digest(tmp_path / "m")
    *_, last = [line for line in lines if line.startswith("progress ")]
    total = sum(p.stat().st_size for p in sources.src.rglob("*") if p.is_file())
    assert last.startswith(f"progress ext (2 objects): {total} of {total} bytes")


# --- a tar is unpacked while it downloads ---------------------------------------------------


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_tar_is_unpacked_while_it_downloads_without_a_copy_of_the_archive(
    tmp_path: Path,
) -> None:
    """The server holds back the rest of the body until the first member is on disk in the
    work tree, and no archive file is there: the set costs the disk once."""
    first = bytes(range(256)) * 8192  # 2 MiB
    body = tar_bytes([("first.bin", first), ("second.bin", b"y" * (2 << 20))])
    half = len(body) // 2 + (1 << 20)  # first.bin whole (headers + 2 MiB), second.bin begun
    seen_tree: list[list[str]] = []
    failure: list[BaseException] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:half])
            self.wfile.flush()
            try:
                work = wait_until(
                    "first.bin unpacked in the work tree",
                    lambda: [
                        p
                        for p in tmp_path.glob(".m.*.part")
                        if (p / "tree" / "first.bin").is_file()
                        and (p / "tree" / "first.bin").stat().st_size == len(first)
                    ],
                    timeout=30,
                    interval=0.02,
                )[0]
                seen_tree.append(sorted(q.name for q in work.iterdir()))
            except BaseException as e:
                failure.append(e)
            self.wfile.write(body[half:])

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_server(Handler) as base:
        digest = hashlib.sha256(body).hexdigest()
        result = fetch_model(
            f"{base}/m.tar", tmp_path / "m", digest, env={}, check_onnx=False, log=print
        )
    assert not failure, failure
    assert seen_tree == [["tree"]]  # no archive beside the tree
    assert result.sha256 == digest
    assert (tmp_path / "m" / "first.bin").read_bytes() == first


def test_a_streamed_tar_cut_short_is_fetched_again_into_an_empty_tree(tmp_path: Path) -> None:
    from tests.integration.test_fetch import Reply, ScriptedServer, running

    body = tar_bytes([("a.bin", b"a" * 300_000), ("b.bin", b"b" * 300_000)])
    with running(ScriptedServer()) as server:
        url = server.route(
            "/s.tar",
            Reply(body=body[: len(body) // 2], declared_length=len(body)),
            Reply(body=body),
        )
        lines: list[str] = []
        result = fetch_model(
            url, tmp_path / "m", env={}, check_onnx=False, backoff=0.01, log=lines.append
        )
    assert len(server.hits("/s.tar")) == 2
    retries = [line for line in lines if "attempt 1/4 failed" in line]
    assert len(retries) == 1 and "retrying" in retries[0], lines
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["a.bin", "b.bin"]


def test_a_streamed_tar_over_the_limit_is_refused_at_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "big.tar"
    archive.write_bytes(tar_bytes([("small.bin", b"s" * 1000), ("big.bin", b"\0" * 100_000)]))
    with pytest.raises(FetchError) as e:
        fetch_model(str(archive), tmp_path / "m", check_onnx=False, max_unpacked_bytes=50_000)
    assert "archive member 'big.bin': members declare 101000 bytes unpacked with it" in str(e.value)
    assert "refused before it is written" in str(e.value)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))
