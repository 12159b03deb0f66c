"""`make bench`: every system side by side on the same models and load, in one run.

Measures the in-process onnxruntime limit, modelservice (JSON and binary, batching on and
off), KServe's model server and a naive FastAPI endpoint with wrk at several concurrencies,
then the operator at scale when the local control plane is up, and writes
docs/benchmarks.md with one PNG chart per model. `--quick` is a few-second smoke run that
writes to .cache/bench/quick/ unless --out is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from bench import load, models, report, servers  # noqa: E402
from bench.limit import BATCH_SIZES, measure_limit  # noqa: E402

CACHE = REPO / ".cache" / "bench"
OUTPUT_TOLERANCE = 1e-4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (about 2 s per point)")
    p.add_argument("--duration", type=float, help="seconds per load point (default 10, quick 2)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per server (default 3, quick 1)")
    p.add_argument("--connections", default="1,16,64", help="comma-separated concurrencies")
    p.add_argument(
        "--models", default="mlp,cnn,cnn_wide,encoder", help=f"of {','.join(models.MODEL_SPECS)}"
    )
    p.add_argument(
        "--systems",
        default="ours,kserve,naive",
        help="comma-separated: ours, kserve, naive (the limit is always measured)",
    )
    p.add_argument("--server-cpus", help="taskset CPU list for servers, e.g. 1 (default: none)")
    p.add_argument("--load-cpus", help="taskset CPU list for wrk, e.g. 0 (default: none)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes of the multi-process configurations of ours and KServe "
        "(default: one per CPU)",
    )
    p.add_argument("--operator-sizes", help="ModelService counts (default 100,500,1000; quick 100)")
    p.add_argument("--no-operator", action="store_true", help="skip the operator-scale part")
    p.add_argument(
        "--llm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="language models against llama.cpp's llama-server (bench/llm.py; --quick: its "
        "quick run); --no-llm skips them",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy our runtime at the targets' load points (default: on, off with --quick)",
    )
    p.add_argument("--out", type=Path, help="report path (default docs/benchmarks.md)")
    p.add_argument("--render", type=Path, metavar="RESULTS.json", help="only re-render a report")
    args = p.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.profile = (not args.quick) if args.profile is None else args.profile
    args.connections = [int(c) for c in args.connections.split(",")]
    args.models = args.models.split(",")
    for name in args.models:
        if name not in models.MODEL_SPECS:
            p.error(f"--models: expected names from {sorted(models.MODEL_SPECS)}, got {name!r}")
    args.systems = args.systems.split(",")
    for s in args.systems:
        if s not in ("ours", "kserve", "naive"):
            p.error(f"--systems: expected ours, kserve or naive, got {s!r}")
    sizes = args.operator_sizes or ("100" if args.quick else "100,500,1000")
    args.operator_sizes = [int(n) for n in sizes.split(",")]
    quick_out = CACHE / "quick" / "benchmarks.md"
    args.out = args.out or (quick_out if args.quick else REPO / "docs" / "benchmarks.md")
    return args


def verify(url: str, body: models.Body, model: models.BenchModel) -> str:
    """'ok', or what is wrong with the server's answer to `body` (checked before measuring)."""
    req = urllib.request.Request(url, data=body.data, headers=body.headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            got = models.decode_response(r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable answer: {e}"
    if got.shape != model.expected.shape:
        return f"wrong output shape {list(got.shape)}, expected {list(model.expected.shape)}"
    err = float(abs(got - model.expected).max())
    if err > OUTPUT_TOLERANCE:
        return f"wrong output values: max abs difference {err:.2g} from in-process onnxruntime"
    return "ok"


def specs_for(
    model: models.BenchModel, systems: list[str], workers: int
) -> list[servers.ServerSpec]:
    """Ours in one process and in `workers` processes (batching on; off only multi-process),
    KServe at its default of one worker and with `workers`, and the naive endpoint."""
    specs = []
    multi = [workers] if workers > 1 else []
    if "ours" in systems:
        specs += [servers.our_runtime(model, batching=True, workers=w) for w in [*multi, 1]]
        specs += [servers.our_runtime(model, batching=False, workers=w) for w in multi or [1]]
    if "kserve" in systems:
        specs += [servers.kserve(model, workers=w) for w in [1, *multi]]
    if "naive" in systems:
        specs.append(servers.naive(model))
    return specs


def bench_model(
    model: models.BenchModel, specs: list[servers.ServerSpec], args: argparse.Namespace
) -> tuple[dict, list[dict]]:
    """Start every system at once, check answers, warm up, then measure them interleaved.

    All servers stay up for the whole model so that each concurrency is measured for every
    system back to back: slow drifts in background load (a shared machine) then hit all
    systems alike instead of whichever happened to run last. Idle servers use no CPU; the
    CPU the other servers did use during a run is recorded as `others_cpu_s`.
    """
    infos: dict[str, dict] = {}
    runs: list[dict] = []
    work = CACHE / "work"
    started: list[servers.RunningServer] = []
    targets: list[tuple[servers.RunningServer, str]] = []
    try:
        for spec in specs:
            info = infos[spec.key] = {"label": spec.label, "verify": {}}
            server = servers.RunningServer(spec, CACHE / "logs", cpus=args.server_cpus)
            try:
                server.__enter__()
            except (RuntimeError, TimeoutError, OSError) as e:
                info["error"] = str(e).splitlines()[0]
                print(f"  {spec.key}: {e}", flush=True)
                continue
            started.append(server)
            url = f"{server.url}/v2/models/{model.name}/infer"
            for kind in spec.bodies:
                info["verify"][kind] = problem = verify(url, model.body(kind), model)
                if problem != "ok":
                    print(f"  {spec.key} {kind}: {problem} -- not measured", flush=True)
                    continue
                targets.append((server, kind))
        for server, kind in targets:
            if args.warmup > 0:
                url = f"{server.url}/v2/models/{model.name}/infer"
                load.run_wrk(url, model.body(kind), 16, args.warmup, work, threads=args.wrk_threads)
        for conns in args.connections:
            for server, kind in targets:
                spec = server.spec
                others = [s for s in started if s is not server]
                others_before = sum(servers.cpu_seconds(s.pid) for s in others)
                try:
                    res = load.run_wrk(
                        f"{server.url}/v2/models/{model.name}/infer",
                        model.body(kind),
                        conns,
                        args.duration,
                        work,
                        threads=args.wrk_threads,
                        cpus=args.load_cpus,
                        server_cpu=lambda server=server: servers.cpu_times(server.pid),
                    )
                except (RuntimeError, OSError) as e:
                    infos[spec.key].setdefault("load_errors", []).append(str(e)[:300])
                    print(f"  {spec.key} {kind} c={conns}: {e}", flush=True)
                    continue
                others_cpu = sum(servers.cpu_seconds(s.pid) for s in others) - others_before
                runs.append(
                    {
                        "key": spec.key,
                        "label": spec.label,
                        "system": spec.system,
                        "batching": spec.batching,
                        "workers": spec.workers,
                        "body": kind,
                        **res.to_dict(),
                        "others_cpu_s": others_cpu,
                    }
                )
                cores = res.server_cpu_s / res.duration_s
                print(
                    f"  {spec.key:13s} {kind:6s} c={conns:<3d} {res.requests_per_s:9,.0f} req/s"
                    f"  p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms"
                    f"  errors {res.errors}  server {cores:.2f} cores",
                    flush=True,
                )
        for server in started:
            infos[server.spec.key]["rss_peak_mib"] = servers.rss_mib(server.pid, "VmHWM")
            if server.proc.poll() is not None:
                code = server.proc.returncode
                infos[server.spec.key]["error"] = f"exited with code {code} during the run"
    finally:
        for server in started:
            server.stop()
    return infos, runs


def measure_serving_cost(model: models.BenchModel, args: argparse.Namespace) -> dict:
    """CPU per request of the runtime itself (user and kernel) and of wrk, serving the
    zero-compute twin of `model` as at the CNN target's point (binary, batching on, the
    multi-process configuration, TARGET_CONNECTIONS connections): what serving costs with
    the model's own compute taken out."""
    print(f"  serving cost: zero-compute twin of {model.name}", flush=True)
    twin = models.zero_compute_twin(model, CACHE / "models")
    ours = servers.our_runtime(twin, batching=True, workers=args.workers)
    spec = dataclasses.replace(ours, bodies=("binary",))
    at_target = argparse.Namespace(**{**vars(args), "connections": [report.TARGET_CONNECTIONS]})
    infos, runs = bench_model(twin, [spec], at_target)
    if not runs:
        info = infos[spec.key]
        problems = [info.get("error"), *info["verify"].values(), *info.get("load_errors", [])]
        why = next((p for p in problems if p and p != "ok"), "not measured")
        return {"key": spec.key, "error": why}
    run = runs[0]
    per_request = 1e6 / max(1, run["requests"])
    return {
        **run,
        "model": twin.name,
        "server_user_us": run["server_user_s"] * per_request,
        "server_system_us": run["server_system_s"] * per_request,
        "wrk_us": run["load_cpu_s"] * per_request,
    }


def run_profiles(bench_models: list[models.BenchModel], args: argparse.Namespace) -> list[dict]:
    """Where our runtime spends its time at the issue's target load points (py-spy)."""
    from bench.profile_runtime import profile

    points = [("mlp", "json"), ("cnn", "binary")]
    out = []
    for model in bench_models:
        for name, kind in points:
            if model.name != name:
                continue
            spec = servers.our_runtime(model, batching=True)
            print(f"profiling {spec.key} {name} {kind} c=16 ...", flush=True)
            try:
                out.append(profile(spec, model, kind, 16, min(args.duration, 8.0), top=12))
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                out.append({"system": spec.key, "model": name, "body": kind, "error": str(e)})
    return out


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # Servers run in their own sessions: unwinding through the `finally` blocks is what
    # stops them, so a terminated bench must raise rather than die on the spot.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        report.render(results, args.out)
        print(f"wrote {args.out}")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    load.ensure_wrk()
    notes: list[str] = []
    if "kserve" in args.systems:
        kserve_version = servers.ensure_kserve_venv(CACHE / "kserve-venv.log")
        print(f"kserve {kserve_version} in {servers.KSERVE_VENV}", flush=True)
    started = datetime.now(UTC)
    results: dict = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "environment": report.collect_environment(load.wrk_version()),
        "settings": {
            "quick": args.quick,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.wrk_threads,
            "server_cpus": args.server_cpus,
            "load_cpus": args.load_cpus,
            "workers": args.workers,
            "batch_sizes": list(BATCH_SIZES),
        },
        "loadavg_start": Path("/proc/loadavg").read_text().split()[0],
        "models": {},
        "notes": notes,
    }
    bench_models = models.export_models(CACHE / "models", args.models)
    for model in bench_models:
        print(f"== {model.name}: {model.description}", flush=True)
        lim = measure_limit(model, seconds=1.0 if args.quick else 3.0)
        print(
            f"  limit: {lim.batch1_runs_per_s:,.0f} runs/s at batch 1, "
            f"{lim.best_samples_per_s:,.0f} samples/s at batch {lim.best_batch}",
            flush=True,
        )
        entry: dict = {
            "description": model.description,
            "limit": lim.to_dict(),
            "servers": {},
            "runs": [],
        }
        entry["servers"], entry["runs"] = bench_model(
            model, specs_for(model, args.systems, args.workers), args
        )
        # The limit again after the servers: the higher of the two is the ceiling, so a
        # noisy first measurement can never flatter the servers' ratios.
        again = measure_limit(model, seconds=1.0 if args.quick else 3.0)
        entry["limit_again"] = again.to_dict()
        for field in ("batch1_runs_per_s", "best_samples_per_s"):
            if getattr(again, field) > entry["limit"][field]:
                entry["limit"][field] = getattr(again, field)
                if field == "best_samples_per_s":
                    entry["limit"]["best_batch"] = again.best_batch
        if model.name in report.COMPUTE_BOUND and "ours" in args.systems:
            entry["serving_cost"] = measure_serving_cost(model, args)
        results["models"][model.name] = entry
    if args.profile and "ours" in args.systems:
        results["profiles"] = run_profiles(bench_models, args)
    if args.no_operator:
        results["operator_scale"] = {"skipped": "--no-operator"}
    else:
        from bench import operator_scale

        results["operator_scale"] = operator_scale.run(args.operator_sizes, CACHE / "operator")
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[0]
    raw = CACHE / f"results-{started.strftime('%Y%m%dT%H%M%S')}.json"
    results["raw_path"] = str(raw.relative_to(REPO))
    raw.write_text(json.dumps(results, indent=1, default=str))
    report.render(results, args.out)
    print(f"wrote {args.out} (raw: {raw})", flush=True)
    if args.llm:
        from bench import llm

        print("== language models (bench/llm.py)", flush=True)
        llm.main(["--quick"] if args.quick else [], out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
