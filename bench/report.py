"""Turn one benchmark run's results into docs/benchmarks.md and its PNG charts.

The results are a plain dict (also saved as JSON under .cache/bench/) so the report can be
re-rendered without re-measuring: `python bench/run.py --render RESULTS.json`.
"""

from __future__ import annotations

import importlib.metadata as md
import math
import os
import platform
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from bench.servers import KSERVE_VENV, REPO

# Targets of issue 5 (2 cores, CPU, 16 connections).
TARGET_MLP_VS_NAIVE = 3.0
TARGET_MLP_VS_KSERVE = 8.0
TARGET_CNN_OF_LIMIT = 0.8
TARGET_P99_OVER_P50 = 3.0
TARGET_OPERATOR_SECONDS = 60.0
TARGET_OPERATOR_RSS_MIB = 200.0
TARGET_CONNECTIONS = 16
# Models of the "≥ 80% of in-process batched samples/s" target (compute-bound).
COMPUTE_BOUND = ("cnn", "cnn_wide")


def _versions(names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = "not installed"
    return out


def _kserve_versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "['kserve', 'onnxruntime', 'fastapi', 'uvicorn', 'pydantic', 'orjson']}))"
    )
    python = KSERVE_VENV / "bin" / "python"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-200:]}
    import json

    return json.loads(done.stdout)


def collect_environment(wrk_version: str) -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git or "unknown",
        "wrk": wrk_version,
        "project_venv": _versions(
            ["onnxruntime", "numpy", "fastapi", "uvicorn", "pydantic", "orjson", "torch"]
        ),
        "kserve_venv": _kserve_versions(),
    }


# ---------------------------------------------------------------- rendering helpers


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    if x == float("inf"):
        return "not reached"
    return f"{x:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def _find(runs: list[dict], key: str, body: str, conns: int) -> dict | None:
    for r in runs:
        if r["key"] == key and r["body"] == body and r["connections"] == conns:
            return r
    return None


def _kserve_like(runs: list[dict], r: dict) -> dict | None:
    """KServe's run with the same data, connections and number of worker processes."""
    want = ("kserve", r["body"], r["connections"], r.get("workers", 1))
    for k in runs:
        if (k["system"], k["body"], k["connections"], k.get("workers", 1)) == want:
            return k
    return None


def _ours_keys(runs: list[dict]) -> list[str]:
    """Our configurations in the order they were measured (multi-process first)."""
    keys: list[str] = []
    for r in runs:
        if r["system"] == "ours" and r["key"] not in keys:
            keys.append(r["key"])
    return keys


def _verdict(ok: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[ok]


def _model_table(model: dict) -> list[str]:
    limit = model["limit"]
    runs = model["runs"]
    lines = [
        "| System | Data | Conns | req/s | samples/s | p50 ms | p99 ms | p99.9 ms | errors "
        "| server CPU (cores) | wrk CPU (cores) | req per server CPU-s | ÷ limit b1 "
        "| ÷ limit best | x KServe (same workers) | x naive | load avg |",
        "|" + "---|" * 17,
    ]
    for r in runs:
        kserve = _kserve_like(runs, r)
        naive = _find(runs, "naive", "json", r["connections"])
        cores = r["server_cpu_s"] / r["duration_s"] if r["duration_s"] else None
        wrk_cores = r["load_cpu_s"] / r["duration_s"] if r.get("load_cpu_s") is not None else None
        per_cpu = r["requests"] / r["server_cpu_s"] if r["server_cpu_s"] else None
        label = f"**{r['label']}**" if r["system"] == "ours" else r["label"]
        lines.append(
            f"| {label} | {r['body']} | {r['connections']} | {_fmt(r['requests_per_s'])} "
            f"| {_fmt(r['samples_per_s'])} | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} "
            f"| {_fmt(r['p999_ms'], 2)} | {r['errors']} | {_fmt(cores, 2)} "
            f"| {_fmt(wrk_cores, 2)} | {_fmt(per_cpu)} "
            f"| {_ratio(r['samples_per_s'], limit['batch1_runs_per_s'])} "
            f"| {_ratio(r['samples_per_s'], limit['best_samples_per_s'])} "
            f"| {_ratio(r['requests_per_s'], kserve and kserve['requests_per_s'])} "
            f"| {_ratio(r['requests_per_s'], naive and naive['requests_per_s'])} "
            f"| {r['loadavg_before']:.1f} |"
        )
    return lines


def _targets(results: dict) -> list[str]:
    models = results["models"]
    lines = ["| Target (issue 5) | Measured | Verdict |", "|---|---|---|"]
    c = TARGET_CONNECTIONS
    mlp = models.get("mlp")
    if mlp:
        runs = mlp["runs"]
        naive = _find(runs, "naive", "json", c)
        kserves = [
            k for k in runs if (k["system"], k["body"], k["connections"]) == ("kserve", "json", c)
        ]
        for key in _ours_keys(runs):
            ours = _find(runs, key, "json", c)
            if not ours:
                lines.append(f"| MLP, JSON, {c} conns ({key}) | not measured | not measured |")
                continue
            rps = ours["requests_per_s"]
            vs_naive = rps / naive["requests_per_s"] if naive else None
            lines.append(
                f"| MLP, JSON, {c} conns, {ours['label']}: ≥ {TARGET_MLP_VS_NAIVE:g}x naive "
                f"| {_fmt(rps)} req/s = {_ratio(rps, naive and naive['requests_per_s'])} naive "
                f"| {_verdict(None if vs_naive is None else vs_naive >= TARGET_MLP_VS_NAIVE)} |"
            )
            for kserve in kserves:
                vs_kserve = rps / kserve["requests_per_s"]
                lines.append(
                    f"| MLP, JSON, {c} conns, {ours['label']}: ≥ {TARGET_MLP_VS_KSERVE:g}x "
                    f"{kserve['label']} | {_ratio(rps, kserve['requests_per_s'])} "
                    f"({_fmt(kserve['requests_per_s'])} req/s) "
                    f"| {_verdict(vs_kserve >= TARGET_MLP_VS_KSERVE)} |"
                )
    for name in COMPUTE_BOUND:
        cnn = models.get(name)
        if not cnn:
            continue
        best = cnn["limit"]["best_samples_per_s"]
        for key in [k for k in _ours_keys(cnn["runs"]) if k.startswith("ours-batch")]:
            ours = _find(cnn["runs"], key, "binary", c)
            share = ours["samples_per_s"] / best if ours else None
            measured = (
                f"{_fmt(ours['samples_per_s'])} samples/s = {share:.0%} of in-process "
                f"{_fmt(best)} (batch {cnn['limit']['best_batch']})"
                if ours
                else "not measured"
            )
            label = ours["label"] if ours else key
            lines.append(
                f"| {name.upper()}, binary, {c} conns, {label}: ≥ {TARGET_CNN_OF_LIMIT:.0%} of "
                f"in-process batched samples/s | {measured} "
                f"| {_verdict(None if share is None else share >= TARGET_CNN_OF_LIMIT)} |"
            )
    for name, model in models.items():
        for r in model["runs"]:
            if r["system"] != "ours" or r["connections"] != c:
                continue
            ratio = r["p99_ms"] / r["p50_ms"] if r["p50_ms"] else None
            lines.append(
                f"| {name.upper()}, {r['body']}, {c} conns, {r['label']}: p99 ≤ "
                f"{TARGET_P99_OVER_P50:g}x p50 | p50 {r['p50_ms']:.2f} ms, p99 "
                f"{r['p99_ms']:.2f} ms ({_fmt(ratio, 2)}x) "
                f"| {_verdict(None if ratio is None else ratio <= TARGET_P99_OVER_P50)} |"
            )
    ours_runs = [r for m in models.values() for r in m["runs"] if r["system"] == "ours"]
    errors = sum(r["errors"] for r in ours_runs)
    lines.append(
        f"| No errors (every run of modelservice) | {errors} errors in {len(ours_runs)} runs "
        f"| {_verdict(None if not ours_runs else errors == 0)} |"
    )
    op = results.get("operator_scale") or {}
    full = next((s for s in op.get("sizes", []) if s["count"] == 1000), None)
    if full:
        secs = full.get("reconciled_s")
        lines.append(
            f"| Operator: 1000 ModelServices fully reconciled within "
            f"{TARGET_OPERATOR_SECONDS:g} s | "
            + (f"{secs:.1f} s" if secs is not None else f"not done in {full['timeout_s']:.0f} s")
            + f" | {_verdict(secs is not None and secs <= TARGET_OPERATOR_SECONDS)} |"
        )
        rss = full.get("steady_rss_mib")
        lines.append(
            f"| Operator: steady-state RSS under {TARGET_OPERATOR_RSS_MIB:g} MiB "
            f"| {_fmt(rss, 0)} MiB (peak {_fmt(full.get('peak_rss_mib'), 0)} MiB) "
            f"| {_verdict(None if rss is None else rss < TARGET_OPERATOR_RSS_MIB)} |"
        )
    else:
        lines.append(
            "| Operator: 1000 ModelServices within 60 s, RSS < 200 MiB | not measured "
            f"({op.get('skipped', 'no 1000 run')}) | not measured |"
        )
    return lines


def _serving_cost_section(results: dict) -> list[str]:
    """How much CPU the CNN target leaves for serving, next to what serving costs."""
    cores = results["environment"]["usable_cores"]
    c = TARGET_CONNECTIONS
    share = TARGET_CNN_OF_LIMIT
    rows = []
    for name in COMPUTE_BOUND:
        model = results["models"].get(name) or {}
        cost = model.get("serving_cost")
        if not cost:
            continue
        if "error" in cost:
            rows.append(f"| {name.upper()} | not measured: {cost['error']} | | | | | | |")
            continue
        best = model["limit"]["best_samples_per_s"]
        compute = cores * 1e6 / best
        run = _find(model["runs"], cost["key"], "binary", c)
        # wrk's cost per request at the target point itself when measured, else on the twin.
        wrk = cost["wrk_us"]
        if run and run["requests_per_s"]:
            wrk = run["load_cpu_s"] / (run["requests_per_s"] * run["duration_s"]) * 1e6
        runtime = cost["server_user_us"] + cost["server_system_us"]
        measured = f"{run['samples_per_s'] / best:.0%}" if run else "not measured"
        rows.append(
            f"| {name.upper()} | {compute:,.0f} | {compute * (1 / share - 1):,.0f} | {wrk:,.0f} "
            f"| {runtime:,.0f} ({cost['server_user_us']:,.0f} + "
            f"{cost['server_system_us']:,.0f}) at {_fmt(cost['requests_per_s'])} req/s "
            f"| {compute / (compute + wrk + runtime):.0%} | {measured} |"
        )
    if not rows:
        return []
    return [
        f"## What the {share:.0%} target leaves for serving",
        "",
        f"The in-process limit keeps all {cores} cores on the model. A server at {share:.0%} "
        f"of it spends {share:.0%} of the same cores on the same compute, so each request "
        f"may cost at most {1 / share - 1:.0%} of the limit's CPU per sample in everything "
        "else: the load generator, the kernel's TCP work and the runtime's reading, parsing, "
        "batching and answering. The runtime's part is measured by serving a zero-compute "
        "twin of each model (same input, an output of the same size, almost no work) with "
        f"the target's configuration, binary, {c} connections; user + kernel CPU of its "
        "process tree per request. `expected` = compute / (compute + wrk + runtime): the "
        "share of the limit these costs allow when the server's compute is as efficient as "
        "the limit's. The twin runs a few minutes after the target point, and this "
        "machine's speed drifts by 10-30% over minutes, so `expected` and `measured` agree "
        "only roughly; the gap between `left` and `wrk + runtime` is the point.",
        "",
        f"| Model | limit's CPU per sample (us) | left per request at {share:.0%} (us) "
        "| wrk per request (us) | runtime per request, user + kernel (us) | expected "
        "| measured |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _operator_section(op: dict) -> list[str]:
    lines = ["## Operator scale", ""]
    if not op or op.get("skipped"):
        why = op.get("skipped", "not run") if op else "not run"
        lines.append(f"Not measured in this run: {why}.")
        return [*lines, ""]
    lines += [op.get("method", ""), ""]
    if op.get("service_cidr_note"):
        lines += [f"Control plane: {op['service_cidr_note']}.", ""]
    lines += [
        "| ModelServices | creates sent (s) | all Deployments exist (s) "
        "| all statuses current (s) | reconcile p50 (s) | reconcile p99 (s) "
        "| operator RSS idle / peak / steady (MiB) | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in op["sizes"]:
        lines.append(
            f"| {s['count']} | {_fmt(s.get('create_s'), 1)} | {_fmt(s.get('deployments_s'), 1)} "
            f"| {_fmt(s.get('reconciled_s'), 1)} "
            f"| {_fmt(s.get('reconcile_p50_s'), 1)} | {_fmt(s.get('reconcile_p99_s'), 1)} "
            f"| {_fmt(s.get('idle_rss_mib'))} / {_fmt(s.get('peak_rss_mib'))} / "
            f"{_fmt(s.get('steady_rss_mib'))} "
            f"| {'; '.join(x for x in (s.get('note', ''), s.get('cleanup', '')) if x)} |"
        )
    return [*lines, ""]


def _profile_section(profiles: list[dict]) -> list[str]:
    if not profiles:
        return []
    lines = [
        "## Where modelservice spends its time",
        "",
        "py-spy (`bench/profile_runtime.py`, 250 Hz, all threads, idle frames dropped) on the "
        "runtime with batching on at the targets' load points, 16 connections. Self time = "
        "share of samples whose innermost frame is that function; inclusive = share of samples "
        "with that runtime function anywhere on the stack. `Runner.run` self time is time in "
        "the event loop's C code (uvloop: socket reads/writes, httptools parsing, callback "
        "dispatch) that py-spy cannot see into without --native.",
        "",
    ]
    for p in profiles:
        head = f"### {p['model'].upper()}, {p['body']}, {p['system']}"
        if p.get("error"):
            lines += [head, "", f"Not profiled: {p['error']}", ""]
            continue
        lines += [
            head,
            "",
            f"{p['requests_per_s']:,.0f} req/s while sampled (p50 {p['p50_ms']:.2f} ms, "
            f"p99 {p['p99_ms']:.2f} ms); stacks in `{p['stacks']}`.",
            "",
            "| self | function | | inclusive | function |",
            "|---|---|---|---|---|",
        ]
        for (sf, ss), (inf_, is_) in zip(p["self"], p["inclusive"], strict=False):
            lines.append(f"| {ss:.1%} | `{sf}` | | {is_:.1%} | `{inf_}` |")
        lines.append("")
    return lines


def render_chart(model_name: str, model: dict, path: Path) -> None:
    """Grouped bars: samples/s of each system/data at each concurrency, limits as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = model["runs"]
    configs: list[tuple[str, str, str]] = []
    for r in runs:
        c = (r["key"], r["body"], f"{r['label']}, {r['body']}")
        if c not in configs:
            configs.append(c)
    conns = sorted({r["connections"] for r in runs})
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(configs))
    for i, (key, body, label) in enumerate(configs):
        xs, ys = [], []
        for j, c in enumerate(conns):
            r = _find(runs, key, body, c)
            if r:
                xs.append(j + (i - (len(configs) - 1) / 2) * width)
                ys.append(r["samples_per_s"])
        bars = ax.bar(
            xs, ys, width=width, label=label, hatch="" if key.startswith("ours") else "//"
        )
        ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=6, rotation=90, padding=2)
    limit = model["limit"]
    ax.axhline(limit["batch1_runs_per_s"], color="k", linestyle="--", linewidth=1,
               label=f"in-process, batch 1 ({limit['batch1_runs_per_s']:,.0f}/s)")  # fmt: skip
    ax.axhline(limit["best_samples_per_s"], color="k", linestyle=":", linewidth=1,
               label=f"in-process, batch {limit['best_batch']} "
                     f"({limit['best_samples_per_s']:,.0f}/s)")  # fmt: skip
    ax.set_yscale("log")
    lowest = min((r["samples_per_s"] for r in runs if r["samples_per_s"] > 0), default=1.0)
    highest = max([limit["best_samples_per_s"], *(r["samples_per_s"] for r in runs)])
    ax.set_ylim(bottom=10 ** math.floor(math.log10(max(lowest, 1.0))), top=highest * 3)
    ax.set_xticks(range(len(conns)), [f"{c} conns" for c in conns])
    ax.set_ylabel("samples/s (log scale)")
    title = f"{model['description']}: throughput, one sample per request"
    ax.set_title("\n".join(textwrap.wrap(title, 85)), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: dict, out_md: Path) -> None:
    """Write the Markdown report and one PNG chart per model beside it."""
    env = results["environment"]
    st = results["settings"]
    workers = st.get("workers", 2)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    pv, kv = env["project_venv"], env["kserve_venv"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run.py{' --quick' if st['quick'] else ''}`) on "
        f"{results['date']}, git `{env['git']}`. All systems, models and loads below were "
        "measured in this one run on the same machine; ratios within the run are the "
        "meaningful figures.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {env['cpu']}, {env['usable_cores']} usable cores, {env['memory_gib']} GiB "
        f"memory, Linux {env['kernel']}, Python {env['python']}.",
        f"- Load average at start: {results['loadavg_start']}; at end: {results['loadavg_end']}"
        " (other jobs shared this machine; see the per-run `loadavg_before` in the raw JSON).",
        f"- Project venv: onnxruntime {pv['onnxruntime']}, numpy {pv['numpy']}, fastapi "
        f"{pv['fastapi']}, uvicorn {pv['uvicorn']}, pydantic {pv['pydantic']}, orjson "
        f"{pv['orjson']}, torch {pv['torch']} (export only).",
        "- KServe venv (`.cache/bench-kserve-venv`): "
        + ", ".join(f"{k} {v}" for k, v in kv.items())
        + ".",
        f"- Load generator: {env['wrk']}.",
        "",
        "## Method",
        "",
        "- **Models**: "
        + "; ".join(f"{m['description']}" for m in results["models"].values())
        + ". Exported from `tests/modelzoo.py` with "
        "`modelservice_runtime.tools.export.export_module`"
        " (opset 17, dynamic batch axis). Every request carries one sample; every system "
        "gets byte-identical bodies (V2 JSON, or V2 binary tensor data with binary output "
        "requested) and each server's answer is checked against in-process onnxruntime "
        "before it is measured.",
        "- **Limit**: in-process `InferenceSession.run` (default session options and "
        f"threads), batch 1 and the best of batch sizes {st['batch_sizes']}, no HTTP; "
        "measured before and again after the servers, and the higher figure is used so "
        "that background load can only make the servers' ratios look worse, never better.",
        "- **Order**: for each model all servers run at once (idle ones use no CPU) and every"
        " concurrency is measured for all systems back to back, so drifts in background load"
        " hit every system alike.",
        "- **modelservice**: `modelservice serve MODEL --max-batch-size 32` (batching on; "
        "default delay) and `--max-batch-size 1` (off), `--log-level warning`, defaults "
        f"otherwise; batching on with 1 process and with `--workers {workers}` (one per core,"
        " each with cores/workers onnxruntime threads), batching off with "
        f"`--workers {workers}`.",
        "- **KServe**: `kserve.ModelServer` with a `kserve.Model` whose `predict` runs the same"
        " onnxruntime session (bench/kserve_server.py), V2 protocol, latency logging, gRPC and"
        f" the access log off; 1 worker (its default) and `--workers {workers}`.",
        "- **Load generator CPU**: `wrk CPU (cores)` is the CPU time wrk itself used per "
        "second of the run: on this machine it is taken from the same cores the server "
        "needs.",
        "- **naive**: bench/naive_server.py, FastAPI + pydantic V2 request model, sync endpoint"
        " calling `session.run` per request, uvicorn with the access log off (JSON only).",
        f"- **Load**: wrk, closed loop, {st['wrk_threads']} wrk thread, "
        f"{', '.join(map(str, st['connections']))} connections, {st['duration_s']:g} s per "
        f"point after a {st['warmup_s']:g} s warm-up per server, 10 s request timeout. Errors "
        "= non-2xx responses + socket errors (connect/read/write/timeout).",
        f"- **Pinning**: server {st['server_cpus'] or 'not pinned (both cores)'}, wrk "
        f"{st['load_cpus'] or 'not pinned'} with one thread, so the load generator takes at "
        "most one core and the server competes with it for the rest — as in the issue's "
        "reference figures (load generator on the same box). `server CPU (cores)` is the "
        "CPU time the server's process tree used per second of the run; `req per server "
        "CPU-s` is throughput per core actually spent.",
        "- Ratios: `÷ limit b1` and `÷ limit best` divide samples/s by the in-process batch-1"
        " runs/s and best batched samples/s; `x KServe (same workers)` compares req/s with "
        "KServe on the same data format and connections with as many worker processes; "
        "`x naive` with the naive endpoint (JSON) at the same connections. `load avg` is "
        "the 1-minute load average just before the point "
        "(2 cores: above 2 means other work was queued for the CPUs).",
        "",
        "## Targets (issue 5)",
        "",
        *_targets(results),
        "",
    ]
    for name, model in results["models"].items():
        lim = model["limit"]
        sweeps = [("before the servers", lim["sweep"])]
        if model.get("limit_again"):
            sweeps.append(("after the servers", model["limit_again"]["sweep"]))
        sweep_text = "; ".join(
            f"{when}: " + ", ".join(f"{b}: {v:,.0f}" for b, v in sweep.items())
            for when, sweep in sweeps
        )
        lines += [
            f"## {name.upper()}: {model['description']}",
            "",
            f"In-process limit (the higher of two measurements): **"
            f"{lim['batch1_runs_per_s']:,.0f} runs/s at batch 1**, **"
            f"{lim['best_samples_per_s']:,.0f} samples/s at batch {lim['best_batch']}**. "
            f"Samples/s by batch size, {sweep_text}.",
            "",
        ]
        if model.get("limit_again"):
            a = model["limit_again"]["batch1_runs_per_s"]
            b = model["limit"]["sweep"].get("1") or model["limit"]["sweep"].get(1)
            if a and b and max(a, b) / min(a, b) > 1.5:
                lines += [
                    f"The batch-1 limit moved {max(a, b) / min(a, b):.1f}x between the two "
                    "measurements: onnxruntime's spinning thread pool is very sensitive to "
                    "other work on 2 cores. Ratios use the higher figure (the strict reading).",
                    "",
                ]
        for key, info in model["servers"].items():
            if info.get("error"):
                lines.append(f"- `{key}` not measured: {info['error']}")
            for body, problem in info.get("verify", {}).items():
                if problem != "ok":
                    lines.append(f"- `{key}` {body}: {problem}")
        chart = out_md.parent / f"benchmark-{name}.png"
        if model["runs"]:
            render_chart(name, model, chart)
            lines += ["", *_model_table(model), "", f"![{name} throughput]({chart.name})", ""]
    lines += _serving_cost_section(results)
    lines += _profile_section(results.get("profiles") or [])
    lines += _operator_section(results.get("operator_scale") or {})
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    lines += [
        "Raw results of this run: `" + results["raw_path"] + "`. Re-render with "
        "`.cache/venv/bin/python bench/run.py --render <that file>`.",
        "",
    ]
    # The other benches' marked sections (real node, explanations, language models, ...)
    # stay as they were.
    from bench.doc_sections import marked_sections

    kept = marked_sections(out_md.read_text()) if out_md.exists() else []
    out_md.write_text("\n".join(lines) + "".join(f"\n{k}\n" for k in kept))
