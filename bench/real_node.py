"""The real node (hack/node-up.sh): how long `kubectl apply` takes to a Ready pod, and what
the Service path (kube-proxy) costs against a direct `modelservice serve`.

    .cache/venv/bin/python bench/real_node.py [--runs 3] [--duration 10] [--connections 16]

Needs `make cluster-up images` with the real node. The operator is the chart's (its image,
watching one namespace); the model is bench's MLP, fetched over HTTP from the node's address.

1. Start-up of the MLP and of the tests' tiny Llama (`format: genai`; --no-llm leaves it
   out), split by the pod's own timestamps: scheduled (apply -> PodScheduled), sandbox
   and image (-> model-fetch started), fetch (-> model-fetch finished), container start
   (-> runtime started), load and warm-up (-> the runtime's "model ... is ready" log line),
   probe (-> pod Ready), and status (-> the ModelService's phase Ready, seen by a watch-free
   poll every 0.2 s). Median of --runs applies, each of a fresh ModelService.
2. Throughput, per model of --throughput (THROUGHPUT_LEGS: the MLP with JSON bodies, the
   CNN with binary tensors, the tiny Llama with 16-token completions): wrk through the
   ClusterIP, through the Gateway
   (hack/gateway-up.sh's Traefik on the node, the ModelService's HTTPRoute, by its Host), and
   against `modelservice serve` on the host with the same model and flags, alternating
   (--rounds times); the ratios of the medians, and the CPU per request of the pod, Traefik
   and wrk. Servers, Traefik and wrk share the 2 cores.
3. Cold start from zero: the chart again with its activator, a ModelService with
   minReplicas 0 left idle until it is at zero, then one request through the Gateway (the
   MLP: a V2 inference; the tiny Llama: a streamed completion, to its first event), and
   one V2 inference of the MLP sent to its Service's ClusterIP instead (the hold slice,
   docs/scale-to-zero.md), held until a pod is Ready (--cold-runs times per model),
   against that model's start-up median of 1.

Writes its section of docs/benchmarks.md (between the real-node markers, replaced on each
run; `make bench` runs it after bench/run.py) and the raw figures to .cache/bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import models, servers  # noqa: E402
from bench.doc_sections import write_section  # noqa: E402
from bench.load import ensure_wrk, run_wrk  # noqa: E402
from bench.servers import free_port  # noqa: E402
from tests import tinyllm  # noqa: E402
from tests.integration import test_real_node as real  # noqa: E402
from tests.integration import test_scale_to_zero as s2z  # noqa: E402
from tests.integration.conftest import CRD_PATH, DEFAULT_KUBECONFIG, Kubectl  # noqa: E402

BEGIN, END = "<!-- real-node:begin -->", "<!-- real-node:end -->"
PHASES = ("scheduled", "sandbox + image", "fetch", "container start", "load + warm-up", "probe",
          "status")  # fmt: skip


def ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def startup_once(k: Kubectl, model: dict[str, Any], name: str) -> dict[str, float]:
    """One ModelService `name` serving `model` (its spec.model, with its served name)
    applied, timed to Ready by phase, and deleted."""
    body = real.manifest(name, model)
    applied = time.time()
    k.apply(body, real.NAMESPACE)
    while True:
        st = (k.get("msvc", name, real.NAMESPACE).get("status")) or {}
        if st.get("phase") == "Ready":
            status_at = time.time()
            break
        if time.time() - applied > 300:
            raise SystemExit(f"{name} not Ready after 300 s: {real.describe(k, name)}")
        time.sleep(0.2)
    (pod,) = real.pods_of(k, name)
    cond = {c["type"]: ts(c["lastTransitionTime"]) for c in pod["status"]["conditions"]}
    (fetch,) = pod["status"]["initContainerStatuses"]
    (runtime,) = pod["status"]["containerStatuses"]
    logs = k.run("logs", pod["metadata"]["name"], "-n", real.NAMESPACE, "-c", "runtime",
                 "--timestamps").stdout  # fmt: skip
    loaded = next(ln for ln in logs.splitlines() if f"model {model['name']} is ready" in ln)
    marks = [
        applied,
        cond["PodScheduled"],
        ts(fetch["state"]["terminated"]["startedAt"]),
        ts(fetch["state"]["terminated"]["finishedAt"]),
        ts(runtime["state"]["running"]["startedAt"]),
        ts(loaded.split()[0]),
        cond["Ready"],
        status_at,
    ]
    k.run("delete", "msvc", name, "-n", real.NAMESPACE, "--wait=true")
    # Kubernetes stamps whole seconds: a phase can come out slightly negative; clamp at 0.
    out = {p: max(0.0, b - a) for p, a, b in zip(PHASES, marks, marks[1:], strict=False)}
    out["total"] = status_at - applied
    return out


# The throughput legs, from the cheapest answer to the dearest: the MLP's costs about as
# much CPU as the Gateway's hop (the worst case for a proxy); the CNN's several times more,
# its images sent as binary tensors, as a user would (JSON would add parsing in the pod and
# flatter the Gateway's ratio); the tiny Llama's, a 16-token completion, more again.
THROUGHPUT_LEGS = ("mlp", "cnn", "llm")
LLM_TOKENS = 16


@dataclass(frozen=True)
class Leg:
    """One model of the throughput legs: its spec.model, what `modelservice serve` takes on
    the host, and the request wrk posts."""

    name: str
    spec_model: dict[str, Any]
    local: Path
    path: str
    body: models.Body


def onnx_leg(model: models.BenchModel, files: Any, kind: str) -> Leg:
    file = model.path.name
    spec_model = {"uri": files.url(file), "sha256": files.sha256[file], "name": model.name}
    path = f"/v2/models/{model.name}/infer"
    return Leg(model.name, spec_model, model.path, path, model.body(kind))


def llm_leg(spec_model: dict[str, Any], folder: Path) -> Leg:
    """A non-streamed greedy completion of exactly LLM_TOKENS tokens."""
    doc = {"model": spec_model["name"], "prompt": "the quick brown fox jumps over the lazy dog",
           "max_tokens": LLM_TOKENS, "temperature": 0, "ignore_eos": True}  # fmt: skip
    body = models.Body("json", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    return Leg("llm", spec_model, folder, "/v1/completions", body)


def throughput(k: Kubectl, leg: Leg, args: argparse.Namespace) -> dict[str, Any]:
    from tests.integration.processes import stop

    name, path = f"bench-tp-{leg.name}", leg.path
    k.apply(real.manifest(name, leg.spec_model), real.NAMESPACE)
    host = real.wait_ready(k, name)["status"].get("gatewayHost")
    service = f"http://{real.service_address(k, name)}{path}"
    # (target, url, Host header): the chart's operator routes every ModelService through
    # the default Gateway (real.operator_from_chart), which answers for its host.
    targets = [("service", service, None)]
    if host:
        targets.append(("gateway", f"http://{real.gateway_address(k)}{path}", host))
    port = free_port()
    direct = f"http://127.0.0.1:{port}{path}"
    # The flags the operator gives the pod's runtime (its container command), on the host.
    dep = k.get("deployment", name, real.NAMESPACE)
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    flags = cmd[cmd.index("serve") + 2 :]
    for flag in ("--host", "--port"):
        if flag in flags:
            del flags[flags.index(flag) : flags.index(flag) + 2]
    argv = [str(Path(sys.executable).parent / "modelservice"), "serve", str(leg.local), *flags,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = (REPO / ".cache" / "bench" / "real-node-serve.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    body = leg.body
    work = REPO / ".cache" / "bench" / "real-node"
    targets.append(("direct", direct, None))
    runs: dict[str, list[dict]] = {target: [] for target, _, _ in targets}
    (pod,) = real.pods_of(k, name)
    runtime_pids = pod_pids(pod["metadata"]["uid"])
    # Where the CPU goes per request: the pod's processes for the Service and the Gateway,
    # the host server for direct; Traefik's own beside the Gateway's runs.
    server_cpu = {
        "service": lambda: servers.cpu_of(runtime_pids),
        "gateway": lambda: servers.cpu_of(runtime_pids),
        "direct": lambda: servers.cpu_times(proc.pid),
    }
    gateway_pids = traefik_pids()
    try:
        real.wait_until("the direct runtime", lambda: _ready(port), timeout=60)
        for _, url, via in targets:
            run_wrk(url, body, args.connections, 2, work, host=via)  # warm-up, discarded
        for _ in range(args.rounds):
            for target, url, via in targets:
                traefik_before = sum(servers.cpu_of(gateway_pids))
                r = run_wrk(url, body, args.connections, args.duration, work, host=via,
                            server_cpu=server_cpu[target])  # fmt: skip
                traefik_s = sum(servers.cpu_of(gateway_pids)) - traefik_before
                runs[target].append(r.to_dict() | {"traefik_cpu_s": traefik_s})
                print(f"  {target}: {r.requests_per_s:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                      f"p99 {r.p99_ms:.2f} ms, {r.errors} errors, CPU per request: server "
                      f"{r.server_cpu_s / r.requests * 1e6:.0f} us, Traefik "
                      f"{traefik_s / r.requests * 1e6:.0f} us, wrk "
                      f"{r.load_cpu_s / r.requests * 1e6:.0f} us", flush=True)  # fmt: skip
    finally:
        stop(proc)
        log.close()
        k.run("delete", "msvc", name, "-n", real.NAMESPACE, "--wait=true", check=False)
    med = {t: statistics.median(r["requests_per_s"] for r in rs) for t, rs in runs.items()}
    p99 = {t: statistics.median(r["p99_ms"] for r in rs) for t, rs in runs.items()}
    return {
        "runs": runs,
        "median_rps": med,
        "ratio": med["service"] / med["direct"],
        "gateway_ratio": med["gateway"] / med["service"] if "gateway" in med else None,
        "gateway_p99_ratio": p99["gateway"] / p99["service"] if "gateway" in p99 else None,
        "gateway_host": host,
        "flags": flags,
        "body": leg.body.kind,
        "path": path,
        "connections": args.connections,
        "duration_s": args.duration,
    }


def first_inference(name: str) -> float:
    """Seconds to the MLP's V2 answer through the Gateway, by the route of `name`."""
    status, doc, seconds = s2z.infer(name, 240)
    if status != 200:
        raise SystemExit(f"cold start of {name}: {status} {doc}")
    return seconds


def first_inference_by_service(k: Kubectl) -> Any:
    """Seconds to the MLP's V2 answer sent to the Service's ClusterIP (no Gateway)."""

    def first(name: str) -> float:
        ip = k.get("service", name, s2z.NAMESPACE)["spec"]["clusterIP"]
        status, doc, seconds = s2z.infer(name, 240, address=ip)
        if status != 200 or "_held" not in doc:
            raise SystemExit(f"cold start of {name} through its Service: {status} {doc}")
        return seconds

    return first


def first_event(name: str) -> float:
    """Seconds to the first server-sent event of a streamed completion through the Gateway."""
    got = s2z.stream_completion(name, 240)
    if got.status != 200 or not got.events or got.events[-1] != b"data: [DONE]":
        raise SystemExit(f"cold start of {name}: {got.status} {got.events[-3:]}")
    return got.first_s


def cold_starts(
    k: Kubectl, name: str, model: dict[str, Any], runs: int, first_answer: Any
) -> list[float]:
    """Scale to zero (docs/scale-to-zero.md): a ModelService with minReplicas 0 and the
    shortest idle period, left idle until it is at zero (pods gone, route at the
    activator), then one request (through the Gateway, or to the Service), held until a
    pod is Ready, timed by `first_answer(name)`; `runs` times. Needs the chart with the activator
    (tests/integration/test_scale_to_zero.py's namespaces)."""
    k.apply(s2z.scale_to_zero(name, model, idleSeconds=10), s2z.NAMESPACE)
    out = []
    for i in range(runs):
        s2z.wait_at_zero(k, name, timeout=240)
        out.append(first_answer(name))
        print(f"  {name} cold start {i + 1}: first answer after {out[-1]:.2f} s", flush=True)
    k.run("delete", "msvc", name, "-n", s2z.NAMESPACE, "--wait=true")
    return out


def _pids(match) -> list[int]:
    """Host pids whose /proc entry satisfies `match(pid_dir)`: the node's containers run
    as host processes, so their CPU is read like any other."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if match(d):
                    found.append(int(d.name))
            except OSError:  # gone meanwhile
                continue
    return found


def pod_pids(uid: str) -> list[int]:
    """Every process of the pod with this uid (its cgroup path names it)."""
    marks = (uid, uid.replace("-", "_"))
    return _pids(lambda d: any(m in (d / "cgroup").read_text() for m in marks))


def traefik_pids() -> list[int]:
    return _pids(lambda d: (d / "comm").read_text().strip() == "traefik")


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
            return True
    except OSError:
        return False


def gateway_line(t: dict[str, Any]) -> str:
    if t.get("gateway_ratio") is None:
        return " No Gateway ran (hack/gateway-up.sh), so no route was measured."
    return (
        f" Gateway / Service: **{t['gateway_ratio']:.2f}x** req/s, p99 "
        f"{t['gateway_p99_ratio']:.2f}x (the same pod, through Traefik by the route's host "
        f"{t['gateway_host']}; Traefik sends to the pod's address, read from its EndpointSlice)."
    )


def cold_line(result: dict[str, Any]) -> str:
    lines = []
    for label, key, started, what in COLD:
        first, startup = result.get(f"cold_{key}") or [], result.get(f"startup_{started}") or []
        if not first or not startup:
            continue
        median, ready = statistics.median(first), statistics.median(r["total"] for r in startup)
        lines.append(
            f"- {label}: {what} after {', '.join(f'{x:.2f}' for x in first)} s (median "
            f"{median:.2f} s) against its apply-to-Ready median of {ready:.2f} s: "
            f"**{median - ready:+.2f} s** (target: within 1 s)."
        )
    if not lines:
        return "\nNo cold start from zero was measured in this run."
    return (
        "\n**Cold start from zero** (docs/scale-to-zero.md: `minReplicas: 0`, `idleSeconds: 10`, "
        "the chart's activator): one request to a ModelService at zero, through the Gateway "
        "or to its Service, held until a pod is Ready:\n\n" + "\n".join(lines)
    )


# (label, key of result's cold_<key>, key of its startup_<key>, what is timed)
COLD = (
    ("MLP", "mlp", "mlp", "a V2 inference through the Gateway answered"),
    ("MLP, to its Service", "mlp_service", "mlp", "a V2 inference sent to the ClusterIP answered"),
    ("tiny Llama (`format: genai`)", "llm", "llm", "the first event of a streamed completion"),
)


def startup_rows(s: list[dict[str, float]]) -> str:
    return "\n".join(
        f"| {p} | {statistics.median(r[p] for r in s):.2f} | "
        f"{min(r[p] for r in s):.2f}-{max(r[p] for r in s):.2f} |"
        for p in (*PHASES, "total")
    )


def _per_request_us(runs: list[dict[str, Any]], key: str) -> str:
    """CPU microseconds per request over all runs ("server": the pod's processes, or the
    host server for direct)."""
    return f"{sum(r.get(key, 0.0) for r in runs) / sum(r['requests'] for r in runs) * 1e6:.0f}"


def render(result: dict[str, Any]) -> str:
    s, llm = result["startup_mlp"], result.get("startup_llm") or []
    llm_table = (
        f"\nThe tiny Llama of the tests (`format: genai`, an onnxruntime-genai folder as a .tar.gz "
        f"over HTTP), {len(llm)} applied the same way:\n\n| phase | median | range |\n"
        f"| --- | --- | --- |\n{startup_rows(llm)}\n"
        if llm
        else ""
    )
    throughput = "\n".join(throughput_table(name, t) for name, t in result["throughput"].items())
    return f"""{BEGIN}
## The real node: from `kubectl apply` to Ready, and the Service path

Measured by `bench/real_node.py` at {result["when"]} (git {result["git"]}), on the real node of
`make cluster-up` (kubelet {result["kubelet"]}, containerd, CNI bridge, kube-proxy in iptables
mode), with the chart's operator pod and bench's MLP fetched over HTTP from the node's address.
The images were already on the node (`make images`), so "sandbox + image" is sandbox creation
and container start, not a pull.

**Start-up**, {len(s)} fresh ModelServices applied one after another (seconds; the pod's
timestamps have whole-second resolution, so single phases are +-1 s):

| phase | median | range |
| --- | --- | --- |
{startup_rows(s)}
{llm_table}
{throughput}
{cold_line(result)}
{END}
"""


def throughput_table(name: str, t: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {target} | {', '.join(format(r['requests_per_s'], ',.0f') for r in runs)} | "
        f"{statistics.median(r['p50_ms'] for r in runs):.2f} | "
        f"{statistics.median(r['p99_ms'] for r in runs):.2f} | "
        f"{sum(r['errors'] for r in runs)} | {_per_request_us(runs, 'server_cpu_s')} | "
        f"{_per_request_us(runs, 'traefik_cpu_s')} | {_per_request_us(runs, 'load_cpu_s')} |"
        for target, runs in t["runs"].items()
    )
    return f"""
**{name.upper()}: throughput through the Service (ClusterIP, kube-proxy), through the Gateway,
and against a direct `modelservice serve`** of the same model with the pod's own flags
({" ".join(t["flags"])}), wrk with {t["connections"]} connections, {t.get("body", "json")} body,
{t["duration_s"]:.0f} s a run, alternating:

| target | req/s (runs) | p50 ms | p99 ms | errors | CPU µs per request: server | Traefik | wrk |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Service / direct: **{t["ratio"]:.2f}x** (medians).{gateway_line(t)} Everything, wrk
included, shares 2 cores.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="A B rounds of the throughput runs")
    p.add_argument("--cold-runs", type=int, default=3, help="cold starts from zero, per model")
    p.add_argument("--no-llm", action="store_true", help="leave out the tiny Llama's legs")
    p.add_argument(
        "--throughput",
        type=lambda v: v.split(","),
        default=list(THROUGHPUT_LEGS),
        help="models of the throughput legs, of " + ",".join(THROUGHPUT_LEGS),
    )
    args = p.parse_args(argv)
    k = Kubectl(DEFAULT_KUBECONFIG)
    if not real.REAL_NODE_FILE.exists() or "REAL_NODE=yes" not in real.REAL_NODE_FILE.read_text():
        print("bench/real_node.py: no real node (make cluster-up on Linux as root); skipped")
        return 0
    ensure_wrk()
    out_dir = REPO / ".cache" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    onnx_names = ["mlp", *(m for m in args.throughput if m not in ("mlp", "llm"))]
    model, *others = models.export_models(out_dir / "real-node-models", onnx_names)
    node_ip, why_not = real.real_node_ip(k)
    if node_ip is None:
        raise SystemExit(f"bench/real_node.py: the real node is not usable: {why_not}")
    tmp = out_dir / "real-node-files"
    tmp.mkdir(exist_ok=True)
    tiny = None if args.no_llm else tinyllm.cached_tiny_llama(REPO / ".cache" / "test-models")
    result: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        pod = stack.enter_context(real.operator_from_chart(k))
        for other in others:  # served beside mlp.onnx, from the same folder
            shutil.copy(other.path, tmp / other.path.name)
        files = stack.enter_context(real.serve_model_files(node_ip, model.path, tmp))
        mlp = {"uri": files.url("mlp.onnx"), "sha256": files.sha256["mlp.onnx"], "name": "mlp"}
        print(f"operator pod {pod} Ready", flush=True)
        legs = [("mlp", mlp)]
        if tiny is not None:
            llm_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir)))
            llm = stack.enter_context(real.tiny_llm_archive(node_ip, model.path, tiny, llm_dir,
                                                            "llm"))  # fmt: skip
            legs.append(("llm", llm))
        for key, spec_model in legs:
            result[f"startup_{key}"] = []
            for i in range(args.runs):
                r = startup_once(k, spec_model, f"bench-{key}-up-{i}")
                print(f"  {key} start-up {i + 1}: "
                      + ", ".join(f"{p} {v:.1f}s" for p, v in r.items()))  # fmt: skip
                result[f"startup_{key}"].append(r)
        kinds = {"mlp": "json", "cnn": "binary"}
        tp_legs = [onnx_leg(m, files, kinds.get(m.name, "binary")) for m in (model, *others)]
        if tiny is not None:
            tp_legs.append(llm_leg(llm, tiny[1]))
        tp = {leg.name: throughput(k, leg, args) for leg in tp_legs if leg.name in args.throughput}
    with contextlib.ExitStack() as stack:
        stack.enter_context(real.operator_from_chart(
            k, namespace=s2z.NAMESPACE, operator_namespace=s2z.OPERATOR_NAMESPACE,
            release=s2z.RELEASE, activator=True,
        ))  # fmt: skip
        files = stack.enter_context(real.serve_model_files(node_ip, model.path, tmp))
        mlp = {"uri": files.url("mlp.onnx"), "sha256": files.sha256["mlp.onnx"]}
        result["cold_mlp"] = cold_starts(k, "bench-cold", mlp, args.cold_runs, first_inference)
        by_service = first_inference_by_service(k)
        result["cold_mlp_service"] = cold_starts(
            k, "bench-cold-svc", mlp, args.cold_runs, by_service
        )
        if tiny is not None:
            name = "bench-cold-llm"
            llm_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out_dir)))
            llm = stack.enter_context(real.tiny_llm_archive(node_ip, model.path, tiny, llm_dir,
                                                            name))  # fmt: skip
            result["cold_llm"] = cold_starts(k, name, llm, args.cold_runs, first_event)
    kubelet = k.list("nodes", "default", "type=real")[0]["status"]["nodeInfo"]["kubeletVersion"]
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
    result |= {"when": when, "git": git, "kubelet": kubelet, "throughput": tp}
    raw = out_dir / f"real-node-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"  # noqa: UP017
    raw.write_text(json.dumps(result, indent=1))
    doc = write_section(render(result), BEGIN, END)
    for name, t in tp.items():
        print(f"{name}: Service/direct {t['ratio']:.2f}x{gateway_line(t)}")
    print(f"wrote {doc} (raw {raw})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
