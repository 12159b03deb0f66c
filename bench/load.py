"""Load generation with wrk: a Lua script posts one fixed body; `done()` prints the results.

wrk is the standard closed-loop HTTP load generator (Debian package `wrk`). Each connection
keeps exactly one request in flight, so "concurrency" is the number of connections. wrk's
latency histogram is exact to the microsecond; requests that time out are counted as
errors and left out of the percentiles, so errors are always reported next to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.models import BINARY_HEADER, Body

LUA_SCRIPT = """\
-- Posts the body in $BENCH_BODY_FILE; printed results are parsed by bench/load.py.
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local json_len = os.getenv("BENCH_JSON_LENGTH")
if json_len ~= nil and json_len ~= "" then
  wrk.headers["@HEADER@"] = json_len
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "p999_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
""".replace("@HEADER@", BINARY_HEADER)


@dataclass
class LoadResult:
    connections: int
    duration_s: float
    requests: int
    requests_per_s: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # non-2xx (wrk counts status > 399) + socket errors (connect/read/write/timeout)
    error_detail: dict[str, int]
    server_cpu_s: float  # CPU seconds the server process tree used during the run
    server_user_s: float  # ... of which in user space
    server_system_s: float  # ... and in the kernel
    load_cpu_s: float  # CPU seconds wrk itself used (it shares the machine with the server)
    loadavg_before: float

    def to_dict(self) -> dict:
        return asdict(self)


def ensure_wrk() -> str:
    """Path to wrk; installs the Debian package when running as root, else fails clearly."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: apt-get install -y wrk ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = {"stdout": subprocess.DEVNULL, "env": env}
        if subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, **quiet)
        found = shutil.which("wrk")
        if found:
            return found
    raise SystemExit(
        "bench: the load generator `wrk` is not installed; install it with "
        "`sudo apt-get install -y wrk` (Debian/Ubuntu) and run `make bench` again"
    )


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_wrk(
    url: str,
    body: Body,
    connections: int,
    duration_s: float,
    work_dir: Path,
    *,
    threads: int = 1,
    cpus: str | None = None,
    server_cpu=None,  # callable -> (user, system) CPU seconds of the server, or None
    samples_per_request: int = 1,
    host: str | None = None,
) -> LoadResult:
    """One closed-loop wrk run of `duration_s` at `connections` posting `body` to `url`
    (with `host` as the Host header: a Gateway's route)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    script = work_dir / "post.lua"
    script.write_text(LUA_SCRIPT)
    body_file = work_dir / f"body-{body.kind}-{hashlib.sha256(body.data).hexdigest()[:12]}.bin"
    if not body_file.exists():
        body_file.write_bytes(body.data)
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_CONTENT_TYPE": body.headers["Content-Type"],
        "BENCH_JSON_LENGTH": body.headers.get(BINARY_HEADER, ""),
    }
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout", "10s",
        "-s", str(script),
        *(["-H", f"Host: {host}"] if host else []),
        url,
    ]  # fmt: skip
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    load_before = _loadavg()
    cpu_before = server_cpu() if server_cpu else (0.0, 0.0)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration_s + 60)
    wall = time.monotonic() - started
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (
        wrk_before.ru_utime + wrk_before.ru_stime
    )
    cpu_after = server_cpu() if server_cpu else (0.0, 0.0)
    user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (exit {done.returncode}) against {url}: {done.stderr.strip()}\n"
            f"{done.stdout[-2000:]}"
        )
    r = json.loads(line.removeprefix("BENCH_RESULT "))
    seconds = r["duration_us"] / 1e6 or wall
    detail = {k: r[k] for k in ("status", "connect", "read", "write", "timeout")}
    return LoadResult(
        connections=connections,
        duration_s=seconds,
        requests=r["requests"],
        requests_per_s=r["requests"] / seconds,
        samples_per_s=r["requests"] * samples_per_request / seconds,
        p50_ms=r["p50_us"] / 1e3,
        p90_ms=r["p90_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3,
        p999_ms=r["p999_us"] / 1e3,
        mean_ms=r["mean_us"] / 1e3,
        max_ms=r["max_us"] / 1e3,
        errors=sum(detail.values()),
        error_detail=detail,
        server_cpu_s=user + system,
        server_user_s=user,
        server_system_s=system,
        load_cpu_s=wrk_cpu,
        loadavg_before=load_before,
    )
