"""Profile one system under wrk load with py-spy and print where its time goes.

Starts the chosen server, drives it with wrk for --duration seconds, samples it with
`py-spy record --format raw` (collapsed stacks, threads and subprocesses, idle frames
dropped), then prints the functions with the most self time and inclusive time. For the
runtime's owner: `python bench/profile_runtime.py --system ours-batch --model mlp --body json`.
py-spy is installed into the venv on first use (`pip install py-spy`); it needs ptrace
rights over the server (same user, or root).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import load, models, servers  # noqa: E402

CACHE = REPO / ".cache" / "bench"


def top_frames(collapsed: Path, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self-time, inclusive-time) shares of the busiest frames in py-spy's raw output."""
    self_t: collections.Counter[str] = collections.Counter()
    incl_t: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        k = int(count)
        total += k
        self_t[frames[-1]] += k
        for f in set(frames):
            incl_t[f] += k
    if not total:
        return [], []
    # Inclusive time is shown for the runtime's own functions only: the entry frames
    # (main, uvicorn, asyncio) are in every sample and say nothing.
    own = [
        (f, c)
        for f, c in incl_t.most_common()
        if "modelservice_runtime/" in f and not f.startswith(("main (", "run ("))
    ]
    return (
        [(f, c / total) for f, c in self_t.most_common(n)],
        [(f, c / total) for f, c in own[:n]],
    )


def ensure_pyspy() -> Path:
    pyspy = servers.VENV / "bin" / "py-spy"
    if not pyspy.exists():
        pip = [str(servers.VENV / "bin" / "pip"), "install", "-q", "py-spy"]
        subprocess.run(pip, check=True)
    return pyspy


def profile(
    spec: servers.ServerSpec,
    model: models.BenchModel,
    body_kind: str,
    connections: int,
    duration: float,
    top: int = 25,
) -> dict:
    """Load `spec` with wrk while py-spy samples it; the load result and the busiest frames."""
    pyspy = ensure_pyspy()
    out = CACHE / "profile" / f"{spec.key}-{model.name}-{body_kind}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with servers.RunningServer(spec, CACHE / "logs") as server:
        url = f"{server.url}/v2/models/{model.name}/infer"
        body = model.body(body_kind)
        load.run_wrk(url, body, connections, 2, CACHE / "work")  # warm-up
        record = [
            str(pyspy), "record", "--pid", str(server.pid), "--subprocesses",
            "--format", "raw", "--rate", "250", "--duration", str(int(duration)),
            "--output", str(out), "--nonblocking", "--function",
        ]  # fmt: skip
        spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result = load.run_wrk(url, body, connections, duration, CACHE / "work")
        spy.wait(timeout=duration + 30)
    self_top, incl_top = top_frames(out, top) if out.exists() else ([], [])
    return {
        "system": spec.key,
        "label": spec.label,
        "model": model.name,
        "body": body_kind,
        "connections": connections,
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "self": self_top,
        "inclusive": incl_top,
        "stacks": str(out.relative_to(REPO)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    systems = ["ours-batch", "ours-nobatch", "kserve", "naive"]
    p.add_argument("--system", default="ours-batch", choices=systems)
    p.add_argument("--model", default="mlp", choices=sorted(models.MODEL_SPECS))
    p.add_argument("--body", default="json", choices=["json", "binary"])
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    (model,) = models.export_models(CACHE / "models", [args.model])
    spec = {
        "ours-batch": lambda: servers.our_runtime(model, batching=True),
        "ours-nobatch": lambda: servers.our_runtime(model, batching=False),
        "kserve": lambda: servers.kserve(model),
        "naive": lambda: servers.naive(model),
    }[args.system]()
    r = profile(spec, model, args.body, args.connections, args.duration, args.top)
    print(
        f"{spec.label} {args.model} {args.body} c={args.connections}: "
        f"{r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
        "(while sampled by py-spy)"
    )
    print("\nself time (share of all samples):")
    for f, share in r["self"]:
        print(f"  {share:6.1%}  {f}")
    print("\ninclusive time (modelservice_runtime functions):")
    for f, share in r["inclusive"]:
        print(f"  {share:6.1%}  {f}")
    print(f"\ncollapsed stacks: {r['stacks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
