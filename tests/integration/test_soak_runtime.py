"""Soak (`make soak`, marker `soak`): sustained load at capacity on the MLP, zero errors,
and a server RSS that stops growing after warm-up. Writes its figures to
.cache/soak/results.json (tests/soak_report.py); `make soak` then puts them in the runtime
section of docs/reliability.md (a test never writes a tracked file).

Load: wrk (C, so the client takes little of the CPU the server needs) when installed, else
a bounded httpx async client; closed loop, CONNECTIONS connections on 127.0.0.1, each
sending the next request when the last is answered -- the server runs at its capacity.
Requests rotate over V2 JSON, V2 binary and V1 bodies. Duration: MODELSERVICE_SOAK_SECONDS
(default 180).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.integration.runtime_server import Served, binary_body, metric, serve
from tests.soak_report import write_results

pytestmark = pytest.mark.soak

CONNECTIONS = 16
WARMUP_FRACTION = 0.25  # RSS is compared only after this share of the run
RSS_GROWTH_BOUND = 24 * 1024 * 1024  # bytes, late peak over post-warm-up peak


def soak_seconds() -> int:
    return int(os.environ.get("MODELSERVICE_SOAK_SECONDS", "180"))


def bodies(tmp: Path) -> list[tuple[str, Path, dict[str, str]]]:
    """(path, body file, headers) for the three kinds of request."""
    x = np.random.default_rng(0).standard_normal((1, 64), np.float32)
    v2_json = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    v2_bin, bin_headers = binary_body(x)
    v1 = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    out = []
    for name, path, body, headers in [
        ("v2json", "/v2/models/mlp/infer", v2_json, {"Content-Type": "application/json"}),
        (
            "v2bin",
            "/v2/models/mlp/infer",
            v2_bin,
            {"Content-Type": "application/octet-stream", **bin_headers},
        ),
        ("v1", "/v1/models/mlp:predict", v1, {"Content-Type": "application/json"}),
    ]:
        f = tmp / f"{name}.body"
        f.write_bytes(body)
        out.append((path, f, headers))
    return out


@dataclass
class LoadResult:
    tool: str
    requests: int = 0
    errors: int = 0  # non-2xx answers + socket errors/timeouts
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    detail: str = ""


_LUA = """
local reqs = {}
%s
local i = 0
request = function()
  i = i %% #reqs + 1
  return reqs[i]
end
"""


def _lua_request(path: str, body_file: Path, headers: dict[str, str]) -> str:
    hdrs = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    return (
        f'do local f = assert(io.open("{body_file}", "rb")); local b = f:read("*a"); f:close()\n'
        f'reqs[#reqs + 1] = wrk.format("POST", "{path}", {{{hdrs}}}, b) end'
    )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, seconds: int, tmp: Path) -> LoadResult:
    script = tmp / "soak.lua"
    script.write_text(_LUA % "\n".join(_lua_request(*b) for b in bodies(tmp)))
    cmd = [
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    res = LoadResult("wrk", detail=out)
    res.requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    res.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert lat, out
    res.max_ms = _ms(lat.group(3))
    res.p50_ms = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    res.p99_ms = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res.errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    return res


def run_httpx(url: str, seconds: int, tmp: Path) -> LoadResult:
    reqs = [(p, f.read_bytes(), h) for p, f, h in bodies(tmp)]
    latencies: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient, deadline: float, k: int) -> None:
        nonlocal errors
        i = k
        while time.monotonic() < deadline:
            path, body, headers = reqs[i % len(reqs)]
            i += 1
            started = time.perf_counter()
            try:
                r = await client.post(path, content=body, headers=headers)
                errors += r.status_code != 200
            except httpx.TransportError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    async def main() -> None:
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(worker(client, deadline, k) for k in range(CONNECTIONS)))

    started = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - started
    ms = sorted(x * 1e3 for x in latencies)
    return LoadResult(
        "httpx",
        requests=len(ms),
        errors=errors,
        rps=len(ms) / elapsed,
        p50_ms=ms[len(ms) // 2],
        p99_ms=ms[int(len(ms) * 0.99)],
        max_ms=ms[-1],
    )


@dataclass
class RssSampler:
    pid: int
    interval: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic() - started, self.rss()))

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.mark.timeout(soak_seconds() + 300)  # pyproject's 600 s would cut long soaks short
def test_soak_mlp_at_capacity(mlp_onnx: Path, tmp_path: Path) -> None:
    seconds = soak_seconds()
    with serve(mlp_onnx) as served:
        run(served, seconds, tmp_path)


def run(served: Served, seconds: int, tmp: Path) -> None:
    pid = served.proc.pid
    with RssSampler(pid) as sampler:
        rss_start = sampler.rss()
        if shutil.which("wrk"):
            result = run_wrk(served.url, seconds, tmp)
        else:
            result = run_httpx(served.url, seconds, tmp)
    failures = metric(served.url, "nv_inference_request_failure")
    successes = metric(served.url, "nv_inference_request_success")
    alive = httpx.get(served.url + "/v2/health/ready", timeout=5).status_code == 200

    samples = sampler.samples
    assert len(samples) >= 10, f"only {len(samples)} RSS samples; run longer"
    warm = [rss for t, rss in samples if t >= seconds * WARMUP_FRACTION]
    third = max(1, len(warm) // 3)
    early, late = max(warm[:third]), max(warm[-third:])
    growth = late - early
    mib = 1024 * 1024
    rows = [
        ("date (UTC)", datetime.now(UTC).strftime("%Y-%m-%d %H:%M")),
        ("model", "MLP 64->10 (tests/modelzoo.py), default serve flags (batch 32, 500 us)"),
        (
            "load",
            f"{result.tool}, closed loop, {CONNECTIONS} connections, 127.0.0.1, "
            "V2 JSON / V2 binary / V1 rotating, batch 1 per request",
        ),
        ("duration", f"{seconds} s"),
        ("requests answered", f"{result.requests}"),
        ("throughput", f"{result.rps:.0f} req/s"),
        (
            "latency p50 / p99 / max",
            f"{result.p50_ms:.2f} / {result.p99_ms:.2f} / {result.max_ms:.1f} ms",
        ),
        ("errors (non-2xx, socket, timeout)", f"{result.errors}"),
        ("server failure counter", f"{failures:.0f} (success {successes:.0f})"),
        ("RSS at start / end", f"{rss_start / mib:.1f} / {samples[-1][1] / mib:.1f} MiB"),
        (
            f"RSS growth after warm-up ({WARMUP_FRACTION:.0%})",
            f"{growth / mib:+.1f} MiB (bound {RSS_GROWTH_BOUND / mib:.0f} MiB; "
            f"min {min(warm) / mib:.1f}, max {max(warm) / mib:.1f})",
        ),
        ("ready afterwards", "yes" if alive else "NO"),
        ("lost", "nothing" if result.errors == 0 and failures == 0 else "SEE ERRORS"),
    ]
    write_results(rows)
    assert result.requests > 0, result.detail
    assert result.errors == 0, result.detail
    assert failures == 0
    assert alive
    assert growth <= RSS_GROWTH_BOUND, (
        f"RSS grew {growth / mib:.1f} MiB after warm-up: {[s // mib for _, s in samples]}"
    )
    # The sampled RSS is a stable plateau, not a creep: no steady climb between thirds.
    assert statistics.median(warm[-third:]) - statistics.median(warm[:third]) <= RSS_GROWTH_BOUND
