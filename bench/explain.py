"""Explanations: what serving adds to their forward passes, and what they cost inference.

    .cache/venv/bin/python bench/explain.py [--models mlp,cnn] [--repeats 5] [--duration 10]

1. **Cost against the limit.** For each model and method at the defaults (2048 samples,
   images in an 8x8 grid of patches), the limit is the forward passes alone: in-process
   `session.run` of the runtime's own session (its options) over the same number of rows in
   the same chunks (explainer.CHUNK_ROWS), no numpy around them. Then the whole explanation
   in-process (`explain_batch`: the rows built, run and fitted), and over HTTP from
   `modelservice serve` (one client, V1 `:explain`). `limit / served` is the share of the
   served latency that is forward passes.
2. **Inference alongside.** wrk, 16 connections, V2 binary infer of one sample, against the
   same server alone and with two clients posting explanations (SHAP, the defaults) in a
   closed loop beside it, so the explain queue is never empty: inference req/s with / alone.

Writes its section of docs/benchmarks.md (between the explain markers, replaced each run)
and the raw figures to .cache/bench/explain-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# As the runtime does (modelservice_runtime/__init__.py), before numpy loads: one BLAS thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/explain.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench import load, models, servers  # noqa: E402
from bench.doc_sections import write_section  # noqa: E402

BEGIN, END = "<!-- explain:begin -->", "<!-- explain:end -->"
METHODS = ("shap", "lime", "occlusion")
CONNECTIONS = 16
EXPLAIN_CLIENTS = 2
COST_HEAD = (
    "| model | method | rows run | forward passes (ms) | in-process (ms) | served (ms) "
    "| explanations/s | limit / served |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)
SIDE_HEAD = (
    "| model | infer req/s alone | with explanations | ratio | p99 ms alone / with "
    "| explanations/s meanwhile | errors |\n| --- | --- | --- | --- | --- | --- | --- |"
)


def _seconds(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cost(url: str, model: models.BenchModel, repeats: int) -> dict[str, dict[str, float]]:
    """Per method: the forward passes alone (the limit), the whole explanation in-process and
    one served request, in seconds (medians). The three are measured in turn in each repeat,
    so a drift in the machine's other load hits all three alike."""
    from modelservice_runtime.explain.explainer import CHUNK_ROWS, explain_batch
    from modelservice_runtime.explain.params import Defaults, parse_parameters
    from modelservice_runtime.serving.explaining import model_runner
    from modelservice_runtime.serving.model import OnnxModel
    from modelservice_runtime.settings import Settings

    in_process_model = OnnxModel(Settings(model_path=model.path, execution_provider="cpu"))
    session = in_process_model.session  # the runtime's session options: only numpy differs
    run = model_runner(in_process_model)
    client = httpx.Client(base_url=url, timeout=300)
    out: dict[str, dict[str, float]] = {}
    for method in METHODS:
        request = parse_parameters(
            {"method": method},
            defaults=Defaults(),
            instance_shape=model.sample_shape,
            dtype=np.dtype(np.float32),
            outputs=in_process_model.output_names,
            instances=1,
        )
        rows = request.rows()
        chunk = np.repeat(model.sample, CHUNK_ROWS, axis=0)
        tail = np.repeat(model.sample, rows % CHUNK_ROWS, axis=0)
        first = np.repeat(model.sample, 2, axis=0)  # the instance and the baseline
        payload = {"instances": model.sample.tolist(), "parameters": {"method": method}}

        def forward_only(
            chunk: np.ndarray = chunk, tail: np.ndarray = tail, first: np.ndarray = first,
            full_chunks: int = rows // CHUNK_ROWS,
        ) -> None:  # fmt: skip
            session.run(None, {models.INPUT_NAME: first})
            for _ in range(full_chunks):
                session.run(None, {models.INPUT_NAME: chunk})
            if len(tail):
                session.run(None, {models.INPUT_NAME: tail})

        def whole(request: Any = request) -> None:
            explain_batch(run, model.sample, request)

        def served(payload: dict[str, Any] = payload) -> None:
            client.post(f"/v1/models/{model.name}:explain", json=payload).raise_for_status()

        steps = {"limit_s": forward_only, "in_process_s": whole, "served_s": served}
        for fn in steps.values():
            fn()  # the first run allocates; not measured
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(repeats):
            for key, fn in steps.items():
                times[key].append(_seconds(fn))
        out[method] = {"rows": rows + 2, **{k: statistics.median(v) for k, v in times.items()}}
        print(f"  {model.name} {method}: {out[method]}", flush=True)
    client.close()
    return out


def alongside(url: str, model: models.BenchModel, duration: float, work: Path) -> dict:
    """Inference under wrk alone, then with explanations posted beside it."""
    body = model.body("binary")
    infer = f"{url}/v2/models/{model.name}/infer"
    alone = load.run_wrk(infer, body, CONNECTIONS, duration, work)
    stop = threading.Event()
    done = {"ok": 0, "refused": 0, "other": 0}

    def explain_client() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                r = client.post(
                    f"/v1/models/{model.name}:explain", json={"instances": model.sample.tolist()}
                )
                done[{200: "ok", 503: "refused"}.get(r.status_code, "other")] += 1

    threads = [threading.Thread(target=explain_client) for _ in range(EXPLAIN_CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # let the explain queue fill before measuring (not an outcome)
        before = dict(done)
        started = time.monotonic()
        beside = load.run_wrk(infer, body, CONNECTIONS, duration, work)
        elapsed = time.monotonic() - started
        during = {k: done[k] - before[k] for k in done}
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    return {
        "alone": alone.to_dict(),
        "with_explain": beside.to_dict(),
        "explanations_per_s": during["ok"] / elapsed,
        "explain_answers": during,
    }


def render(result: dict) -> str:
    rows = []
    for name, m in result["models"].items():
        for method in METHODS:
            p = m["cost"][method]
            s = p["served_s"]
            rows.append(
                f"| {name} | {method} | {p['rows']:,} | {p['limit_s'] * 1e3:,.1f} | "
                f"{p['in_process_s'] * 1e3:,.1f} | {s * 1e3:,.1f} | {1 / s:,.2f} | "
                f"{p['limit_s'] / s:.0%} |"
            )
    side = []
    for name, m in result["models"].items():
        a = m["alongside"]
        alone, beside = a["alone"], a["with_explain"]
        side.append(
            f"| {name} | {alone['requests_per_s']:,.0f} | {beside['requests_per_s']:,.0f} | "
            f"{beside['requests_per_s'] / alone['requests_per_s']:.0%} | "
            f"{alone['p99_ms']:.2f} / {beside['p99_ms']:.2f} | "
            f"{a['explanations_per_s']:.2f} | {alone['errors'] + beside['errors']} |"
        )
    notes = "".join(f"\n\n- {n}" for n in result.get("notes", []))
    return f"""{BEGIN}
## Explanations: served against their forward passes, and inference alongside

Measured by `bench/explain.py` at {result["when"]} (git {result["git"]}), on this machine
({result["cpus"]} cores, shared with other work: load average {result["load_before"]:.2f}
before, {result["load_after"]:.2f} after). `modelservice serve MODEL` with its defaults (one
worker; explanations: SHAP, 2048 samples, images in an 8x8 grid of patches, one explanation
at a time, 8 waiting). One instance per request.

**Cost.** *Forward passes* = in-process `session.run` of the same rows in the same chunks
of 64, in a session with the runtime's options (the limit); *in-process* = the whole
explanation (`explain_batch`: rows built, run, fitted); *served* = one V1 `:explain`
request over HTTP, one client. Medians of {result["repeats"]} runs. *limit / served* is
the share of the served latency that is the forward passes; the rest is what explaining
and serving add.

{COST_HEAD}
{chr(10).join(rows)}

**Inference alongside.** wrk, {CONNECTIONS} connections, V2 binary infer of one sample,
{result["duration_s"]:.0f} s, against the same server alone, then with
{EXPLAIN_CLIENTS} clients posting SHAP explanations (the defaults) back to back beside it:

{SIDE_HEAD}
{chr(10).join(side)}

Everything, wrk and the explain clients included, shares {result["cpus"]} cores. While
inference requests are in flight the explain thread rests between its model runs as long
as the last one took (`YIELD_TO_INFERENCE` in serving/explaining.py): beside inference an
explanation gets at most about half of the explain thread's time. The absolute figures depend on the
machine's other load (see the load average above); the ratios within the run are the
point.{notes}
Raw figures: `{result["raw"]}`.
{END}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--render", metavar="FILE", help="re-render the section from raw figures")
    p.add_argument("--note", action="append", default=[], help="a note under the tables")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        result["notes"] = result.get("notes", []) + args.note
        print(f"wrote {write_section(render(result), BEGIN, END)}")
        return 0
    load.ensure_wrk()
    out_dir = REPO / ".cache" / "bench"
    work = out_dir / "explain-work"
    load_before = float(Path("/proc/loadavg").read_text().split()[0])
    result: dict[str, Any] = {
        "models": {},
        "repeats": args.repeats,
        "duration_s": args.duration,
        "notes": args.note,
    }
    for model in models.export_models(out_dir / "models", args.models.split(",")):
        entry: dict[str, Any] = {}
        spec = servers.ServerSpec(
            key="ours-explain",
            label="modelservice (defaults)",
            system="ours",
            batching=True,
            bodies=("binary",),
            argv_for_port=[
                *servers.OUR_RUNTIME, str(model.path), "--host", "127.0.0.1",
                "--port", "{port}", "--grpc-port", "0", "--log-level", "warning",
            ],
        )  # fmt: skip
        with servers.RunningServer(spec, out_dir / "logs") as server:
            print(f"{model.name}: cost", flush=True)
            entry["cost"] = cost(server.url, model, args.repeats)
            print(f"{model.name}: inference alongside", flush=True)
            entry["alongside"] = alongside(server.url, model, args.duration, work)
        result["models"][model.name] = entry
    result["load_before"] = load_before
    result["load_after"] = float(Path("/proc/loadavg").read_text().split()[0])
    result["cpus"] = servers.CPUS
    result["git"] = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    now = datetime.now(UTC)
    result["when"] = now.strftime("%Y-%m-%d %H:%M UTC")
    raw = out_dir / f"explain-{now.strftime('%Y%m%dT%H%M%S')}.json"
    result["raw"] = str(raw.relative_to(REPO))
    raw.write_text(json.dumps(result, indent=2))
    print(f"wrote {raw} and {write_section(render(result), BEGIN, END)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
