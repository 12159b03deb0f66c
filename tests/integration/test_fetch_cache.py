"""`modelservice fetch --cache-dir`: hits skip the download, misses fill the cache, two
real fetch processes of the same model at once download it once, and eviction removes
the least recently used entries to the size bound. Against a real HTTP server on
127.0.0.1 that counts every request."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from modelservice_runtime.fetch import FetchError, cache
from modelservice_runtime.fetch.trees import set_digest

from tests import external_data
from tests.needs import needed
from tests.waiting import wait_until


@dataclass
class Blob:
    body: bytes
    etag: str | None = None


@dataclass
class ModelServer:
    """Blobs by path; every request is counted as (method, path). A GET of a path in
    `hold` sends its headers and first byte, then waits for `release` before the rest."""

    blobs: dict[str, Blob] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    hold: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    base: str = ""

    def count(self, method: str, path: str) -> int:
        return self.seen.count((method, path))


@contextlib.contextmanager
def model_server() -> Iterator[ModelServer]:
    state = ModelServer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _headers(self) -> Blob | None:
            state.seen.append((self.command, self.path))
            blob = state.blobs.get(self.path)
            if blob is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob.body)))
            if blob.etag:
                self.send_header("ETag", blob.etag)
            self.end_headers()
            return blob

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            blob = self._headers()
            if blob is None:
                return
            if self.path in state.hold:
                self.wfile.write(blob.body[:1])
                self.wfile.flush()
                assert state.release.wait(60), "the test never released the held GET"
                self.wfile.write(blob.body[1:])
            else:
                self.wfile.write(blob.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def model_archive(tmp: Path, features: int = 256) -> bytes:
    """A .tar.gz of a model folder with external data (features x features weights)."""
    folder = tmp / f"src-{features}"
    external_data.write_model(folder, features=features)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.iterdir()):
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lines(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)

    def having(self, text: str) -> list[str]:
        return [ln for ln in self if text in ln]


def test_a_hit_skips_the_download_and_hardlinks_on_one_filesystem(tmp_path: Path) -> None:
    archive = model_archive(tmp_path)
    cache_dir = tmp_path / "cache"
    with model_server() as server:
        server.blobs["/m.tar.gz"] = Blob(archive)
        uri = server.base + "/m.tar.gz"
        first, second = Lines(), Lines()
        a = cache.fetch_cached(uri, tmp_path / "a", sha(archive), cache_dir=cache_dir, log=first)
        b = cache.fetch_cached(uri, tmp_path / "b", sha(archive), cache_dir=cache_dir, log=second)
        assert server.count("GET", "/m.tar.gz") == 1
    assert first.having(f"cache: miss sha256-{sha(archive)}")
    assert second.having(f"cache: hit sha256-{sha(archive)}")
    assert second.having("by hardlink")
    assert set_digest(a.path) == set_digest(b.path)
    assert sorted(p.name for p in b.path.iterdir()) == ["model.onnx", "weights.bin"]
    # The published set shares inodes with the entry: no bytes were copied.
    entry = cache_dir / "entries" / f"sha256-{sha(archive)}" / "data"
    assert (b.path / "weights.bin").stat().st_ino == (entry / "weights.bin").stat().st_ino
    assert a.sha256 == b.sha256 == sha(archive)
    assert list((cache_dir / "tmp").iterdir()) == []


def test_a_hit_on_another_filesystem_is_copied(tmp_path: Path, mlp_onnx: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        needed("/dev/shm on another filesystem than the cache (pytest's tmp_path)")
    digest = sha(mlp_onnx.read_bytes())
    cache_dir = tmp_path / "cache"
    cache.fetch_cached(str(mlp_onnx), tmp_path / "a.onnx", digest, cache_dir=cache_dir, log=Lines())
    lines = Lines()
    with tempfile.TemporaryDirectory(dir=shm) as other:
        dest = Path(other) / "m.onnx"
        got = cache.fetch_cached(str(mlp_onnx), dest, digest, cache_dir=cache_dir, log=lines)
        assert got.path == dest
        assert got.path.read_bytes() == mlp_onnx.read_bytes()
    assert lines.having("cache: hit") and lines.having("by copy")


def test_a_single_file_model_is_cached_by_its_sha256(tmp_path: Path, mlp_onnx: Path) -> None:
    src = tmp_path / "src.onnx"
    src.write_bytes(mlp_onnx.read_bytes())
    digest = sha(src.read_bytes())
    cache_dir = tmp_path / "cache"
    cache.fetch_cached(str(src), tmp_path / "a.onnx", digest, cache_dir=cache_dir, log=Lines())
    src.unlink()  # a hit must not need the source any more
    lines = Lines()
    dest = f"{tmp_path}/out/"  # a directory, as the trailing / says: model.onnx inside
    got = cache.fetch_cached(str(src), dest, digest, cache_dir=cache_dir, log=lines)
    assert got.path == tmp_path / "out" / "model.onnx"
    assert got.path.read_bytes() == mlp_onnx.read_bytes()
    assert lines.having("cache: hit")


def test_without_sha256_the_key_is_the_uri_and_etag(tmp_path: Path) -> None:
    archive = model_archive(tmp_path)
    other = model_archive(tmp_path, features=128)
    cache_dir = tmp_path / "cache"
    with model_server() as server:
        server.blobs["/m.tgz"] = Blob(archive, etag='"v1"')
        uri = server.base + "/m.tgz"
        cache.fetch_cached(uri, tmp_path / "a", None, cache_dir=cache_dir, log=Lines())
        hit = Lines()
        cache.fetch_cached(uri, tmp_path / "b", None, cache_dir=cache_dir, log=hit)
        assert server.count("GET", "/m.tgz") == 1 and server.count("HEAD", "/m.tgz") == 2
        assert hit.having("cache: hit etag-") and hit.having('keyed by the URI and ETag "v1"')
        # New bytes under a new ETag: a miss, and the new model is what lands.
        server.blobs["/m.tgz"] = Blob(other, etag='"v2"')
        cache.fetch_cached(uri, tmp_path / "c", None, cache_dir=cache_dir, log=Lines())
        assert server.count("GET", "/m.tgz") == 2
        assert (tmp_path / "c" / "weights.bin").stat().st_size == 128 * 128 * 4 + 128 * 4
        # No ETag (or a weak one): the cache is bypassed, and the log says why.
        for etag in (None, 'W/"v3"'):
            server.blobs["/m.tgz"] = Blob(archive, etag=etag)
            lines = Lines()
            cache.fetch_cached(uri, tmp_path / "d", None, cache_dir=cache_dir, log=lines)
            assert lines.having("cache: not used: no sha256 and no strong ETag"), lines
        assert server.count("GET", "/m.tgz") == 4
    assert len(cache.entries(cache_dir)) == 2


def fetch_process(uri: str, dest: Path, digest: str, cache_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelservice_cli", "fetch", uri, str(dest), "--sha256", digest,
         "--cache-dir", str(cache_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_fetch_processes_of_one_model_download_it_once(tmp_path: Path) -> None:
    """The first process's download is held open by the server until the second one says
    it is waiting for the first: they overlap for certain, and the lock decides."""
    archive = model_archive(tmp_path)
    digest = sha(archive)
    cache_dir = tmp_path / "cache"
    with model_server() as server:
        server.blobs["/m.tar.gz"] = Blob(archive)
        server.hold.add("/m.tar.gz")
        uri = server.base + "/m.tar.gz"
        first = fetch_process(uri, tmp_path / "a", digest, cache_dir)
        wait_until(
            "the first fetch's GET", lambda: server.count("GET", "/m.tar.gz") == 1, interval=0.05
        )
        second = fetch_process(uri, tmp_path / "b", digest, cache_dir)
        # The second blocks on the key's lock; its stderr says so before it blocks.
        waiting = second.stderr.readline() if second.stderr else ""
        assert "cache: waiting for another fetch of" in waiting, waiting
        server.release.set()
        _, err1 = first.communicate(timeout=120)
        _, err2 = second.communicate(timeout=120)
        assert first.returncode == 0, err1
        assert second.returncode == 0, err2
        assert server.count("GET", "/m.tar.gz") == 1, server.seen
    assert "cache: miss" in err1 and "cache: hit" in err2
    assert set_digest(tmp_path / "a") == set_digest(tmp_path / "b")
    assert [e.key for e in cache.entries(cache_dir)] == [f"sha256-{digest}"]
    assert list((cache_dir / "tmp").iterdir()) == []


def test_the_loser_of_the_rename_uses_the_winners_entry(tmp_path: Path) -> None:
    """Where locks do not hold (some network filesystems), two fetches build the entry
    side by side: the second rename fails, its copy goes, the entry stays whole."""
    entry = tmp_path / "entries" / "k"
    winner, loser = tmp_path / "tmp" / "k.1", tmp_path / "tmp" / "k.2"
    for staging, text in ((winner, "first"), (loser, "second")):
        (staging / "data").mkdir(parents=True)
        (staging / "data" / "model.onnx").write_text(text)
    entry.parent.mkdir()
    assert cache.insert(winner, entry) is True
    assert cache.insert(loser, entry) is False
    assert not loser.exists()
    assert (entry / "data" / "model.onnx").read_text() == "first"


def test_eviction_removes_the_least_recently_used_to_the_bound(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    models = {}
    for features in (128, 192, 224):
        folder = external_data.write_model(tmp_path / f"m{features}", features=features).parent
        models[features] = (folder, set_digest(folder))
    size = {f: sum(p.stat().st_size for p in d.iterdir()) for f, (d, _) in models.items()}
    bound = size[128] + size[224] + 1  # room for two of them, not three

    def fetch(features: int, dest: str) -> Lines:
        folder, digest = models[features]
        lines = Lines()
        cache.fetch_cached(
            str(folder), tmp_path / dest, digest, cache_dir=cache_dir, max_bytes=bound, log=lines
        )
        return lines

    fetch(128, "a")
    fetch(192, "b")
    assert fetch(128, "c").having("cache: hit")  # 128 is now the most recently used
    evicted = fetch(224, "d")  # over the bound: 192, the least recently used, goes
    assert evicted.having(f"cache: evicted sha256-{models[192][1]}"), evicted
    assert {e.key for e in cache.entries(cache_dir)} == {
        f"sha256-{models[128][1]}",
        f"sha256-{models[224][1]}",
    }
    assert sum(e.size for e in cache.entries(cache_dir)) <= bound
    # Published copies outlive their evicted entry (their own names for the inodes).
    assert set_digest(tmp_path / "b") == models[192][1]
    # One entry over the bound alone is kept: it is the one in use.
    lines = Lines()
    cache.fetch_cached(
        str(models[224][0]), tmp_path / "e", models[224][1], cache_dir=cache_dir, max_bytes=1,
        log=lines,
    )  # fmt: skip
    assert [e.key for e in cache.entries(cache_dir)] == [f"sha256-{models[224][1]}"]
    assert lines.having("what is left is in use")


def test_cache_flags_are_checked(tmp_path: Path, mlp_onnx: Path) -> None:
    from modelservice_cli import main as cli

    digest = sha(mlp_onnx.read_bytes())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FetchError, match=r"--cache-dir: cannot use .*a-file/c: Not a directory"):
        cache.fetch_cached(str(mlp_onnx), tmp_path / "x.onnx", digest, cache_dir=blocker / "c")
    with pytest.raises(FetchError, match=r"--cache-max-bytes: expected bytes > 0, got 0"):
        cache.fetch_cached(
            str(mlp_onnx), tmp_path / "x.onnx", digest, cache_dir=tmp_path / "c", max_bytes=0
        )
    argv = ["fetch", str(mlp_onnx), str(tmp_path / "y.onnx"), "--cache-max-bytes", "10"]
    assert cli.main(argv) == 1
    assert not (tmp_path / "y.onnx").exists()
