"""gRPC ModelInfer (raw tensors) against REST binary, same server, same load, same run.

    .cache/venv/bin/python bench/grpc_vs_rest.py [--models mlp,cnn] [--connections 16]
                                                 [--duration 8] [--rounds 2]

One `modelservice serve` per model (batching on, the defaults, one worker) serves both front
ends over one data plane. The load is closed-loop at the same concurrency for both: wrk
posting the V2 binary body (bench/load.py) on N connections, and ghz (the Go gRPC load
generator, built from the Go module proxy on first use into .cache/bin-ghz) calling ModelInfer
with the tensor in raw_input_contents on N connections, one call in flight each. Both run in
the same server's life, alternating (REST first in odd rounds, gRPC first in even ones), so a
change in the machine's load lands on both. Every answer is checked against in-process
onnxruntime first.

Server CPU per request (user + kernel, from /proc) is the figure that does not depend on the
load generator: the issue's target is gRPC at most REST binary's per request on the CNN and
within 20% on the MLP. Requests/s and latency also carry each load generator's own cost on
the same two cores.

Writes its section of docs/benchmarks.md (between the grpc markers) and the raw figures to
.cache/bench/grpc-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/grpc_vs_rest.py` puts bench/ on the path, not REPO
    sys.path.insert(0, str(REPO))

from bench import load, models, servers  # noqa: E402
from bench.doc_sections import write_section  # noqa: E402

BEGIN, END = "<!-- grpc:begin -->", "<!-- grpc:end -->"
GHZ_VERSION = "v0.121.0"
GHZ_BIN = REPO / ".cache" / "bin-ghz"
PROTO = REPO / "runtime/modelservice_runtime/serving/grpc_front/grpc_predict_v2.proto"
CACHE = REPO / ".cache" / "bench"


def ensure_ghz() -> str:
    """ghz on PATH or in .cache/bin-ghz, else `go install` it there (a Go module)."""
    found = shutil.which("ghz") or (str(GHZ_BIN / "ghz") if (GHZ_BIN / "ghz").exists() else None)
    if found:
        return found
    if not shutil.which("go"):
        raise SystemExit("bench/grpc_vs_rest.py: needs ghz (or Go to build it: go install ghz)")
    print(f"building ghz {GHZ_VERSION} into {GHZ_BIN} ...", flush=True)
    subprocess.run(
        ["go", "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
        env={**os.environ, "GOBIN": str(GHZ_BIN)},
        check=True,
    )
    return str(GHZ_BIN / "ghz")


def infer_request(model: models.BenchModel) -> bytes:
    """The serialized ModelInferRequest of the model's sample, raw, as tritonclient sends."""
    from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb

    x = model.sample.astype("<f4")
    request = pb.ModelInferRequest(model_name=model.name)
    request.inputs.add(name=models.INPUT_NAME, datatype="FP32", shape=x.shape)
    request.outputs.add(name=models.OUTPUT_NAME)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def verify_grpc(target: str, model: models.BenchModel) -> None:
    """The gRPC answer equals in-process onnxruntime (tritonclient.grpc, unmodified)."""
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(target)
    try:
        inp = tgrpc.InferInput(models.INPUT_NAME, list(model.sample.shape), "FP32")
        inp.set_data_from_numpy(model.sample)
        got = client.infer(model.name, [inp]).as_numpy(models.OUTPUT_NAME)
    finally:
        client.close()
    np.testing.assert_allclose(got, model.expected, rtol=1e-4, atol=1e-5)


def run_ghz(
    ghz: str,
    target: str,
    data: Path,
    connections: int,
    duration_s: float,
    pid: int,
    method: str = "ModelInfer",
) -> dict[str, Any]:
    """ghz calling `method` with the serialized request in `data` (an empty file: an empty
    message)."""
    out = data.with_suffix(".json")
    argv = [
        ghz, "--insecure", "--proto", str(PROTO),
        "--call", f"inference.GRPCInferenceService.{method}",
        *(["--binary-file", str(data)] if data.stat().st_size else ["--data", "{}"]),
        "--connections", str(connections), "--concurrency", str(connections),
        "--duration", f"{max(1, round(duration_s))}s", "--timeout", "10s",
        "--cpus", "1", "--format", "json", "--output", str(out), target,
    ]  # fmt: skip
    cpu_before = servers.cpu_times(pid)
    gen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = float(Path("/proc/loadavg").read_text().split()[0])
    done = subprocess.run(argv, capture_output=True, timeout=duration_s + 60)
    gen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_after = servers.cpu_times(pid)
    if done.returncode != 0 or not out.exists():
        said = (done.stderr or done.stdout)[-2000:].decode(errors="replace")
        raise RuntimeError(f"ghz failed (exit {done.returncode}): {said}")
    r = json.loads(out.read_text())
    ok = r.get("statusCodeDistribution", {}).get("OK", 0)
    # Calls in flight when ghz's duration ends die with the connections ghz closes itself:
    # its own stop, not the server's answer; counted apart.
    cut = sum(
        n
        for message, n in (r.get("errorDistribution") or {}).items()
        if "use of closed network connection" in message
    )
    seconds = r["total"] / 1e9
    pct = {p["percentage"]: p["latency"] / 1e6 for p in r.get("latencyDistribution") or []}
    return {
        "requests": ok,
        "requests_per_s": ok / seconds,
        "p50_ms": pct.get(50, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
        "errors": r["count"] - ok - cut,
        "cut_at_end": cut,
        "server_cpu_s": sum(cpu_after) - sum(cpu_before),
        "load_cpu_s": (gen_after.ru_utime + gen_after.ru_stime)
        - (gen_before.ru_utime + gen_before.ru_stime),
        "loadavg_before": load_before,
    }


def run_rest(
    url: str, body: models.Body, connections: int, duration_s: float, work: Path, pid: int
) -> dict[str, Any]:
    r = load.run_wrk(
        url, body, connections, duration_s, work, server_cpu=lambda: servers.cpu_times(pid)
    )
    return {
        "requests": r.requests,
        "requests_per_s": r.requests_per_s,
        "p50_ms": r.p50_ms,
        "p99_ms": r.p99_ms,
        "errors": r.errors,
        "server_cpu_s": r.server_cpu_s,
        "load_cpu_s": r.load_cpu_s,
        "loadavg_before": r.loadavg_before,
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rounds)
    return {
        "requests": requests,
        "requests_per_s": float(np.mean([r["requests_per_s"] for r in rounds])),
        "p50_ms": float(np.median([r["p50_ms"] for r in rounds])),
        "p99_ms": float(np.median([r["p99_ms"] for r in rounds])),
        "errors": sum(r["errors"] for r in rounds),
        "server_cpu_us": 1e6 * sum(r["server_cpu_s"] for r in rounds) / max(1, requests),
        "load_cpu_us": 1e6 * sum(r["load_cpu_s"] for r in rounds) / max(1, requests),
        "rounds": rounds,
    }


def bench_model(
    model: models.BenchModel, args: argparse.Namespace, ghz: str, work: Path
) -> dict[str, Any]:
    grpc_port = servers.free_port()
    spec = servers.our_runtime(model, batching=True)
    argv = [a for a in spec.argv_for_port]
    argv[argv.index("--grpc-port") + 1] = str(grpc_port)
    spec = servers.ServerSpec(
        key="ours-grpc", label="modelservice (REST + gRPC)", system="ours", batching=True,
        bodies=("binary",), argv_for_port=argv,
    )  # fmt: skip
    body = model.body("binary")
    data = work / f"{model.name}-infer.bin"
    data.write_bytes(infer_request(model))
    target = f"127.0.0.1:{grpc_port}"
    with servers.RunningServer(spec, work) as server:
        verify_grpc(target, model)
        url = f"{server.url}/v2/models/{model.name}/infer"
        rest_rounds, grpc_rounds = [], []
        # warm-up, unmeasured: both paths' first calls, allocations, connections
        run_rest(url, body, args.connections, 1, work, server.pid)
        run_ghz(ghz, target, data, args.connections, 1, server.pid)
        for i in range(args.rounds):
            order = ("rest", "grpc") if i % 2 == 0 else ("grpc", "rest")
            for kind in order:
                if kind == "rest":
                    rest_rounds.append(
                        run_rest(url, body, args.connections, args.duration, work, server.pid)
                    )
                else:
                    grpc_rounds.append(
                        run_ghz(ghz, target, data, args.connections, args.duration, server.pid)
                    )
        # The floor: grpcio's cost of a call that does nothing (ServerLive, no model).
        empty = work / "empty.bin"
        empty.write_bytes(b"")
        live = run_ghz(
            ghz, target, empty, args.connections, args.duration, server.pid, "ServerLive"
        )
    return {
        "model": model.name,
        "description": model.description,
        "rest": summarize(rest_rounds),
        "grpc": summarize(grpc_rounds),
        "grpc_live": summarize([live]),
    }


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    rows = []
    for r in results:
        rest, grpc = r["rest"], r["grpc"]
        pairs = [("REST binary (wrk)", rest), ("gRPC raw (ghz)", grpc)]
        if "grpc_live" in r:
            pairs.append(("gRPC ServerLive, no model (ghz)", r["grpc_live"]))
        for label, s in pairs:
            rows.append(
                f"| {r['model']} | {label} | {s['requests_per_s']:.0f} | {s['p50_ms']:.2f} "
                f"| {s['p99_ms']:.2f} | {s['server_cpu_us']:.0f} | {s['load_cpu_us']:.0f} "
                f"| {s['errors']} |"
            )
    ratios = []
    for r in results:
        cpu = r["grpc"]["server_cpu_us"] / r["rest"]["server_cpu_us"]
        rps = r["grpc"]["requests_per_s"] / r["rest"]["requests_per_s"]
        target = 1.0 if r["model"].startswith("cnn") else 1.2
        verdict = "met" if cpu <= target else "missed"
        ratios.append(
            f"- **{r['model']}**: server CPU per request gRPC / REST = {cpu:.2f} "
            f"(target <= {target:.1f}: {verdict}); requests/s gRPC / REST = {rps:.2f}."
        )
    return "\n".join(
        [
            BEGIN,
            "## gRPC against REST binary",
            "",
            "`.cache/venv/bin/python bench/grpc_vs_rest.py` (issue 28). One `modelservice serve` "
            "per model (batching on, defaults, one worker) serves both; closed loop at "
            f"{meta['connections']} concurrent requests: wrk posting the V2 binary body, ghz "
            f"{GHZ_VERSION} calling `ModelInfer` with the tensor in `raw_input_contents` "
            f"(`--cpus 1`). {meta['rounds']} rounds of {meta['duration']:.0f} s each, "
            "alternating which goes first, in the same server's life; every answer checked "
            "against in-process onnxruntime first. Server CPU per request is user + kernel "
            "time of the server process over the requests answered: the figure that does not "
            "depend on the load generator. Requests/s and latency also carry each load "
            "generator's own cost (its CPU per request beside it) on the same cores.",
            "",
            f"Run {meta['time']} on {meta['cpus']} CPUs shared with other work: load average "
            f"{meta['loadavg_before']:.1f} before, {meta['loadavg_after']:.1f} after; ratios "
            "within the run are the figures to read, not the absolute numbers.",
            "",
            "| model | protocol | req/s | p50 ms | p99 ms | server CPU us/req "
            "| load generator CPU us/req | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            *ratios,
            "",
            "Errors count failed answers only; calls still in flight when ghz stops at the end "
            "of its duration fail on the connections ghz closes itself (`use of closed network "
            "connection`): "
            + ", ".join(
                f"{r['model']} {sum(x.get('cut_at_end', 0) for x in r['grpc']['rounds'])}"
                for r in results
            )
            + " such calls in this run, left out.",
            "",
            "**Why gRPC costs more here.** The `ServerLive` rows are calls that touch no "
            "model and no data plane: grpcio's own cost of one unary call in this server ("
            + ", ".join(
                f"{r['grpc_live']['server_cpu_us']:.0f} us beside REST binary's whole "
                f"{r['model']} inference at {r['rest']['server_cpu_us']:.0f} us"
                for r in results
                if "grpc_live" in r
            )
            + "). A py-spy profile of the server under the same gRPC "
            "load on the MLP (`py-spy record` for 6 s, 16 ghz connections) puts about 55% of the "
            "samples in native code under the event loop (grpc.aio's Cython completion-queue "
            "and call machinery) and about 17% in grpc's own poller thread, against about 5% in "
            "the front end's Python (grpc_front: parse, answer, the data plane's request "
            "metrics) and 10% in onnxruntime. The REST path is this runtime's own HTTP "
            "protocol, answered without ASGI and written in one writev "
            "(docs/runtime.md, One request); gRPC goes through grpcio's general machinery, "
            "which wakes a second thread per batch of events. So the issue's targets (gRPC at "
            "most REST binary's CPU per request on the CNN, within 20% on the MLP) are "
            "missed, and grpc_front's own code (about 5%) cannot close the gap. Nor would "
            "grpcio's sync server: checked once by hand (2026-12-06, the same ghz load, a "
            "sync `grpc.server` on a thread pool answering `ServerLive` alone, no model, no "
            "event loop) it cost about 360 us of CPU per call with 1 or 4 threads, still "
            "above REST binary's whole MLP inference, before the hand-off to the event loop an "
            "inference would add. Closing the gap takes an HTTP/2 server of the runtime's own "
            "(as its HTTP/1.1 protocol is), not tried here.",
            "",
            "**Triton's own gRPC front end** was not measured. The one Triton server that "
            "installs from PyPI is the `tritonserver` binary inside PyTriton's wheel "
            "(nvidia-pytriton 0.7.0, checked on this machine): it starts here without a GPU "
            "(`tritonserver --help` runs with the wheel's bundled libraries), but it carries "
            "the Python backend only, no onnxruntime backend, so it cannot serve these ONNX "
            "models as Triton serves them; a Python-backend model calling onnxruntime would "
            "measure its Python stub process and shared-memory hand-off, not its front end "
            "beside ours. Triton's container images need Docker and a registry, which these "
            "machines do not have.",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument("--render", type=Path, help="re-render the section from a results JSON")
    args = p.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print(f"wrote {write_section(render(saved['results'], saved['meta']), BEGIN, END)}")
        return 0
    load.ensure_wrk()
    ghz = ensure_ghz()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = CACHE / f"grpc-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": servers.CPUS,
        "connections": args.connections,
        "duration": args.duration,
        "rounds": args.rounds,
        "loadavg_before": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    started = time.monotonic()
    results = [
        bench_model(m, args, ghz, work)
        for m in models.export_models(CACHE / "models", args.models.split(","))
    ]
    meta["loadavg_after"] = float(Path("/proc/loadavg").read_text().split()[0])
    meta["seconds"] = time.monotonic() - started
    (CACHE / f"grpc-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}))
    text = render(results, meta)
    print(text)
    if not args.no_write:
        print(f"wrote {write_section(text, BEGIN, END)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
