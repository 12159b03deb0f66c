"""Large models (issue 18): a model above protobuf's 2 GiB limit, served from external data.

    .cache/venv/bin/python bench/large_model.py [--gib 2.25] [--rounds 2] [--memory-mib 320]

1. Builds the model from generated weights, streamed to disk (never whole in memory): a
   chain of MatMul layers, x float32 [N, D] -> y [N, D], every weight in one external file
   `weights.bin` beside a small `model.onnx`.
2. **Fetch**: bench/file_server.py (the standard library's file server with sendfile) on
   127.0.0.1 serves the weights file and the set as one `.tar`; `curl -o` and `modelservice
   fetch` take the same file, alternating, and the ratio of their throughputs is reported:
   the weights file alone (`--no-onnx-check`: the download, hashing and the atomic rename),
   and the `.tar` (download, unpack, set checks).
3. **Start**: `modelservice serve model.onnx`, from process start to `/v2/health/ready`
   answering 200 (onnxruntime's session, the warm-up), and its peak RSS (VmHWM) against the
   model's size, one worker. The page cache holds the model (it was just written).
4. **Workers** (`--memory-mib`, a model of a few hundred MiB, with its weights inline and
   external): RSS and PSS of the whole server tree (supervisor + workers) with 1 and 2
   workers, from /proc/PID/smaps_rollup after one inference; docs/runtime.md quotes them.

Writes its section of docs/benchmarks.md (between the large-model markers, replaced on each
run), the raw figures to .cache/bench/large-model.json, and removes the model files after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.doc_sections import write_section  # noqa: E402
from bench.servers import free_port  # noqa: E402
from tests.extdata import matmul_chain as build_model  # noqa: E402

BEGIN, END = "<!-- large-model:begin -->", "<!-- large-model:end -->"
WORK = REPO / ".cache" / "bench" / "large-model"
MIB = 1 << 20
GIB = 1 << 30
BIN = Path(sys.executable).parent


def model_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- processes and their memory ------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def _kib(path: Path, fields: tuple[str, ...]) -> dict[str, int]:
    got = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            got[key] = int(rest.split()[0]) * 1024
    return got


def memory(pid: int) -> dict[str, Any]:
    """Per process of the tree: Rss, Pss (anon/file) from smaps_rollup, VmHWM (peak RSS)."""
    procs = []
    for p in tree(pid):
        with contextlib.suppress(OSError):
            m = _kib(Path(f"/proc/{p}/smaps_rollup"), ("Rss", "Pss", "Pss_Anon", "Pss_File"))
            m |= _kib(Path(f"/proc/{p}/status"), ("VmHWM", "RssAnon", "RssFile"))
            m["pid"] = p
            m["cmd"] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode()
            procs.append(m)
    return {
        "procs": procs,
        "rss": sum(m["Rss"] for m in procs),
        "pss": sum(m["Pss"] for m in procs),
        "pss_anon": sum(m["Pss_Anon"] for m in procs),
        "pss_file": sum(m["Pss_File"] for m in procs),
    }


@contextlib.contextmanager
def serving(
    model: Path, workers: int, log: Path, *flags: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """`modelservice serve` on a free port; yields (process, port, seconds to ready)."""
    port = free_port()
    cmd = [str(BIN / "modelservice"), "serve", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--grpc-port", "0", "--workers", str(workers),
           "--log-level", "warning",
           *flags]  # fmt: skip
    env = {**os.environ, "MODELSERVICE_SHUTDOWN_DELAY_S": "0"}
    with log.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = start + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"serve not ready within 600 s: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc, port, time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def infer(port: int, dim: int) -> None:
    """One binary V2 request of batch 1, answer checked to be finite and of the right shape."""
    x = np.random.default_rng(1).standard_normal((1, dim), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, dim], "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y"}]}).encode()  # fmt: skip
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/model/infer",
        data=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        body = json.loads(r.read())
    y = np.asarray(body["outputs"][0]["data"], dtype=np.float32)
    if y.shape != (dim,) or not np.isfinite(y).all():
        raise SystemExit(f"bad answer from the large model: shape {y.shape}")


# --- fetch against curl --------------------------------------------------------------------


@contextlib.contextmanager
def http_server(directory: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "file_server.py"), str(port), str(directory)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(
                        f"bench/file_server.py did not start: {log.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timed(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    took = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {done.stderr[-2000:]}")
    return took


def fetch_vs_curl(
    url: str, size: int, out: Path, rounds: int, *, onnx_check: bool
) -> dict[str, Any]:
    """Alternate curl and modelservice fetch on `url`; seconds of each run, MiB/s, ratio."""
    curl_s, fetch_s = [], []
    for _ in range(rounds):
        target = out / "curl.out"
        curl_s.append(timed(["curl", "-sS", "-f", "-o", str(target), url]))
        target.unlink()
        dest = out / ("fetched" if url.endswith(".tar") else "fetched.bin")
        extra = [] if onnx_check else ["--no-onnx-check"]
        fetch_s.append(timed([str(BIN / "modelservice"), "fetch", url, str(dest), *extra]))
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    curl, fetch = statistics.median(curl_s), statistics.median(fetch_s)
    return {
        "bytes": size,
        "curl_s": curl_s,
        "fetch_s": fetch_s,
        "curl_mib_s": size / MIB / curl,
        "fetch_mib_s": size / MIB / fetch,
        "ratio": curl / fetch,
    }


# --- the runs ------------------------------------------------------------------------------


def workers_memory(mib: int, work: Path) -> list[dict[str, Any]]:
    """RSS/PSS of the server tree for an inline and an external-data model of `mib` MiB."""
    dim = 2048
    layers = max(1, round(mib * MIB / (4 * dim * dim)))
    rows = []
    for external, prepack in ((True, "auto"), (True, "on"), (False, "auto")):
        root = work / ("mem-ext" if external else "mem-inline")
        path = root / "model.onnx"
        if not path.exists():
            build_model(root, dim, layers, external=external)
        size = model_bytes(root)
        for workers in (1, 2):
            flags = ("--prepack-weights", prepack)
            with serving(path, workers, work / "serve.log", *flags) as (proc, port, ready_s):
                infer(port, dim)
                m = memory(proc.pid)
            rows.append({"external": external, "prepack": prepack, "workers": workers,
                         "model_bytes": size, "ready_s": ready_s, **m})  # fmt: skip
            print(f"memory: external={external} prepack={prepack} workers={workers} "
                  f"rss={m['rss'] / MIB:.0f} pss={m['pss'] / MIB:.0f} MiB "
                  f"(model {size / MIB:.0f} MiB)", flush=True)  # fmt: skip
        if not external or prepack == "on":
            shutil.rmtree(root)
    return rows


def prepack_speed(mib: int, work: Path, seconds: float = 2.0) -> list[dict[str, Any]]:
    """In-process session.run time per batch with and without prepacking, one intra-op
    thread (what each of 2 workers gets on 2 cores), on the workers' model."""
    import onnxruntime as ort

    dim = 2048
    layers = max(1, round(mib * MIB / (4 * dim * dim)))
    path = build_model(work / "speed", dim, layers)
    rows = []
    for prepack in (True, False):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 8, 32):
            x = np.zeros((batch, dim), dtype=np.float32)
            session.run(None, {"x": x})
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                session.run(None, {"x": x})
                runs += 1
            ms = (time.perf_counter() - start) / runs * 1000
            rows.append({"prepack": prepack, "batch": batch, "ms": ms})
            print(f"speed: prepack={prepack} batch={batch} {ms:.1f} ms", flush=True)
        del session
    shutil.rmtree(work / "speed")
    return rows


def large_model_run(gib: float, rounds: int, work: Path) -> dict[str, Any]:
    dim = 8192
    layers = max(1, round(gib * GIB / (4 * dim * dim)))
    root = work / "large"
    start = time.monotonic()
    path = build_model(root, dim, layers)
    build_s = time.monotonic() - start
    size = model_bytes(root)
    if size <= 2 * GIB:
        raise SystemExit(f"--gib {gib}: the model must exceed 2 GiB to mean anything, got {size}")
    print(f"built {layers} x [{dim}, {dim}] float32 = {size / GIB:.2f} GiB in {build_s:.0f} s",
          flush=True)  # fmt: skip
    served = work / "served"
    served.mkdir(exist_ok=True)
    tar_path = served / "large.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in sorted(root.iterdir()):
            tar.add(p, arcname=p.name)
    (served / "weights.bin").hardlink_to(root / "weights.bin")
    out = work / "out"
    out.mkdir(exist_ok=True)
    result: dict[str, Any] = {"dim": dim, "layers": layers, "model_bytes": size}
    with http_server(served, work / "http.log") as base:
        result["fetch_file"] = fetch_vs_curl(
            f"{base}/weights.bin", (root / "weights.bin").stat().st_size, out, rounds,
            onnx_check=False,
        )  # fmt: skip
        print(f"fetch weights.bin: {result['fetch_file']}", flush=True)
        result["fetch_tar"] = fetch_vs_curl(
            f"{base}/large.tar", tar_path.stat().st_size, out, rounds, onnx_check=True
        )
        print(f"fetch large.tar: {result['fetch_tar']}", flush=True)
    shutil.rmtree(served)
    starts = []
    for prepack in ("auto", "on"):
        with serving(path, 1, work / "serve.log", "--prepack-weights", prepack) as (
            proc,
            port,
            ready_s,
        ):
            infer(port, dim)
            m = memory(proc.pid)
            (only,) = m["procs"]
        starts.append({"prepack": prepack, "ready_s": ready_s, "peak_rss": only["VmHWM"],
                       "rss": only["Rss"], "rss_anon": only["RssAnon"],
                       "rss_file": only["RssFile"], "ratio": only["VmHWM"] / size})  # fmt: skip
        print(f"serve (prepack {prepack}): {starts[-1]}", flush=True)
    result["serve"] = starts
    shutil.rmtree(root)
    return result


def render(results: dict[str, Any]) -> str:
    large, mem = results["large"], results["memory"]
    size = large["model_bytes"]

    def fetch_row(name: str, r: dict[str, Any]) -> str:
        runs = ", ".join(f"{s:.1f}" for s in r["fetch_s"])
        curl = ", ".join(f"{s:.1f}" for s in r["curl_s"])
        return (f"| {name} | {r['bytes'] / GIB:.2f} GiB | {r['curl_mib_s']:,.0f} ({curl}) | "
                f"{r['fetch_mib_s']:,.0f} ({runs}) | **{r['ratio']:.2f}x** |")  # fmt: skip

    serve_rows = "\n".join(
        f"| {s['prepack']} | {s['ready_s']:.1f} | {s['peak_rss'] / GIB:.2f} GiB | "
        f"**{s['ratio']:.2f}x** | {s['rss_anon'] / MIB:,.0f} MiB | {s['rss_file'] / GIB:.2f} GiB |"
        for s in large["serve"]
    )
    mem_rows = "\n".join(
        f"| {'external' if r['external'] else 'inline'} | {r['prepack']} | {r['workers']} | "
        f"{r['rss'] / MIB:,.0f} | {r['pss'] / MIB:,.0f} | {r['pss_anon'] / MIB:,.0f} | "
        f"{r['pss_file'] / MIB:,.0f} | {r['ready_s']:.1f} |"
        for r in mem
    )
    by = {(r["prepack"], r["batch"]): r["ms"] for r in results.get("speed", [])}
    speed_rows = "\n".join(
        f"| {b} | {on:.1f} | {off:.1f} | {off / on:.2f}x |"
        for b in sorted({b for _, b in by})
        for on, off in [(by[(True, b)], by[(False, b)])]
    )
    notes = "".join(f"\n- {n}" for n in results.get("notes", []))
    notes = f"\nNotes:\n{notes}\n" if notes else ""
    auto = next(s for s in large["serve"] if s["prepack"] == "auto")
    verdict = "met" if auto["ratio"] <= 1.3 else "missed"
    mem_size = mem[0]["model_bytes"]
    return f"""{BEGIN}
## Large models: above the 2 GiB protobuf limit, from external data

Measured by `bench/large_model.py` at {results["at"]} (git {results["git"]}); load average
{results["loadavg_before"]} before, {results["loadavg_after"]} after (2 cores shared with
other work). The model: {large["layers"]} MatMul layers of
[{large["dim"]}, {large["dim"]}] float32 weights, generated by the bench and streamed to one
external file: **{size / GIB:.2f} GiB** beside a small `model.onnx`. The page cache held the
files (just written).

**Fetch over HTTP on loopback** (bench/file_server.py: the standard library's file server
sending with sendfile), `curl -o` against `modelservice fetch` on the same file, alternating,
{len(large["fetch_file"]["curl_s"])} runs each (MiB/s of the median run; seconds of every
run); the ratio is fetch's throughput over curl's. The weights file alone with
`--no-onnx-check` is the transfer (hashing while streaming and the atomic rename included);
the `.tar` adds writing the archive, unpacking it, the set checks and the model check.

| file | size | curl MiB/s (s) | fetch MiB/s (s) | fetch / curl |
| --- | --- | --- | --- | --- |
{fetch_row("weights.bin", large["fetch_file"])}
{fetch_row("large.tar (the set)", large["fetch_tar"])}

**`modelservice serve model.onnx`, one worker**: from process start to `/v2/health/ready`
answering 200 (session, warm-up), then the peak RSS (VmHWM) after one inference, against the
model's size:

| --prepack-weights | start to ready (s) | peak RSS | peak RSS / model | RssAnon | RssFile |
| --- | --- | --- | --- | --- | --- |
{serve_rows}

Target (issue 18), peak RSS at most 1.3x the model with one worker, default settings:
**{auto["ratio"]:.2f}x, {verdict}**. With `auto` (prepacking off for external data) the weights
stay mapped from the file (RssFile): the page cache holds them once, for every worker.

**Workers** (docs/runtime.md, Memory): a model of {mem_size / MIB:,.0f} MiB (layers of
[2048, 2048]), its weights external or inline; RSS and PSS (MiB) summed over the server's
process tree (supervisor and workers) after one inference:

| weights | --prepack-weights | workers | RSS | PSS | PSS anon | PSS file | start to ready (s) |
| --- | --- | --- | --- | --- | --- | --- | --- |
{mem_rows}

RSS counts a shared page in every process that maps it; PSS divides it among them, so the
PSS sum is what the tree really holds.

**What prepacking buys**: in-process `session.run` on the same {mem_size / MIB:,.0f} MiB model
with one intra-op thread (what each of 2 workers gets here), ms per run:

| batch | prepacked (on) | mapped (auto, external data) | mapped / prepacked |
| --- | --- | --- | --- |
{speed_rows}
{notes}{END}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.25, help="size of the large model (> 2)")
    p.add_argument("--rounds", type=int, default=2, help="curl/fetch runs each, alternating")
    p.add_argument("--memory-mib", type=int, default=320, help="the workers model's size")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render a result file")
    args = p.parse_args(argv)
    raw = REPO / ".cache" / "bench" / "large-model.json"
    if args.render:
        print(write_section(render(json.loads(args.render.read_text())), BEGIN, END))
        return 0
    if shutil.which("curl") is None:
        raise SystemExit("bench/large_model.py: needs curl (apt-get install -y curl)")
    WORK.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=REPO).stdout.strip()  # fmt: skip
    results: dict[str, Any] = {
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "loadavg_before": f"{os.getloadavg()[0]:.2f}",
    }
    try:
        results["memory"] = workers_memory(args.memory_mib, WORK)
        results["speed"] = prepack_speed(args.memory_mib, WORK)
        results["large"] = large_model_run(args.gib, args.rounds, WORK)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    results["loadavg_after"] = f"{os.getloadavg()[0]:.2f}"
    raw.write_text(json.dumps(results, indent=1))
    print(write_section(render(results), BEGIN, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
