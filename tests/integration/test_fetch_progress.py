"""Progress lines of `modelservice fetch` from a real loopback HTTP server.

The server sends the body a MiB at a time (fetch reads a MiB per call) and sends the next
MiB only once the fetch has logged a line showing the bytes so far: lines at a short
interval are then certain to appear mid-transfer, whatever the machine's speed, and no
sleep decides anything. Assertions are on the lines' content and on the byte counts.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from modelservice_runtime.fetch import FetchError, fetch_model
from modelservice_runtime.fetch.progress import PREFIX

from tests.loopback_http import loopback_server

MIB = 1 << 20
PARTS = 3
TAIL = 12345  # the body is 3 MiB + TAIL bytes
GATE_S = 30.0

LINE = re.compile(
    rf"^{PREFIX}m\.bin: (?P<done>\d+)(?: of (?P<total>\d+))? bytes \((?P<human>[^)]*)\), "
    r"(?P<rate>[\d.]+ (?:B|KiB|MiB|GiB|TiB))/s, (?P<tail>ETA [\w ]+|done in [\w ]+|total unknown)$"
)


class Lines:
    """The fetch's log, with a way to wait for a progress line showing `n` bytes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, line: str) -> None:
        with self.cond:
            self.lines.append(line)
            self.cond.notify_all()

    def wait_for_bytes(self, n: int) -> None:
        def seen() -> bool:
            return any(int(m["done"]) >= n for m in map(LINE.match, self.lines) if m)

        with self.cond:
            if not self.cond.wait_for(seen, timeout=GATE_S):
                raise AssertionError(
                    f"no progress line showing {n} bytes within {GATE_S}s; got {self.lines}"
                )


@contextlib.contextmanager
def gated_server(lines: Lines, *, declare_length: bool) -> Iterator[str]:
    body = bytes(range(256)) * (PARTS * MIB // 256) + b"x" * TAIL
    errors: list[BaseException] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # without Content-Length the body ends at EOF

        def do_GET(self) -> None:
            self.send_response(200)
            if declare_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for part in range(PARTS):
                    self.wfile.write(body[part * MIB : (part + 1) * MIB])
                    self.wfile.flush()
                    lines.wait_for_bytes((part + 1) * MIB)
                self.wfile.write(body[PARTS * MIB :])
            except BaseException as e:  # reported by the test, not lost in the thread
                errors.append(e)
                raise

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_server(Handler) as base:
        yield f"{base}/m.bin"
    assert not errors, errors


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def parsed(lines: list[str]) -> list[re.Match[str]]:
    matches = [LINE.match(line) for line in lines]
    assert all(matches), f"a progress line is not in the documented format: {lines}"
    return [m for m in matches if m]


def test_lines_at_the_interval_with_bytes_total_rate_and_eta(tmp_path: Path) -> None:
    lines = Lines()
    size = PARTS * MIB + TAIL
    with gated_server(lines, declare_length=True) as url:
        result = fetch_model(
            url, tmp_path / "m.bin", check_onnx=False, progress_interval=0.02, log=lines, env={}
        )
    assert result.size == size
    got = parsed(lines.lines)
    *during, last = got
    assert len(during) >= PARTS, lines.lines  # the server waited for one per MiB
    done = [int(m["done"]) for m in got]
    assert done == sorted(done), f"bytes went backwards: {done}"
    assert all(m["total"] == str(size) for m in got)
    assert all(m["tail"].startswith("ETA ") for m in during)
    assert any(re.fullmatch(r"ETA \d+ s", m["tail"]) for m in during if int(m["done"]) < size)
    assert int(last["done"]) == size and last["tail"].startswith("done in ")
    assert "3.0 MiB of 3.0 MiB, 100%" in last["human"]
    # a line that saw 1 MiB of the 3 MiB + TAIL reads 33%
    assert any(m["human"] == f"1.0 MiB of {size / MIB:.1f} MiB, 33%" for m in during)


def test_without_a_content_length_the_total_is_unknown(tmp_path: Path) -> None:
    lines = Lines()
    with gated_server(lines, declare_length=False) as url:
        fetch_model(
            url, tmp_path / "m.bin", check_onnx=False, progress_interval=0.02, log=lines, env={}
        )
    *during, last = parsed(lines.lines)
    assert during and all(m["total"] is None and m["tail"] == "total unknown" for m in during)
    assert int(last["done"]) == PARTS * MIB + TAIL and last["tail"].startswith("done in ")


def test_interval_zero_prints_nothing_and_negative_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(b"x" * 1000)
    lines = Lines()
    fetch_model(str(src), tmp_path / "a.bin", check_onnx=False, progress_interval=0, log=lines)
    assert lines.lines == []
    fetch_model(str(src), tmp_path / "b.bin", check_onnx=False, log=lines)  # default 5 s
    (only,) = lines.lines  # the copy ends before the first interval: just the last line
    assert only.startswith(f"{PREFIX}m.bin: 1000 of 1000 bytes (1000 B of 1000 B, 100%), ")
    with pytest.raises(FetchError, match="--progress-interval: expected seconds >= 0, got -1"):
        fetch_model(str(src), tmp_path / "c.bin", check_onnx=False, progress_interval=-1)
