"""The real node with `spec.model.cache`: how a second replica's start from the cache
compares with the first's download, for a model with external data.

    .cache/venv/bin/python bench/real_node_cache.py [--features 8192] [--runs 2]

Needs `make cluster-up images` with the real node (as bench/real_node.py). The model is
tests/external_data.py's (y = x @ W + b, W float32 [F, F] in weights.bin: 256 MiB at
F=8192), as a .tar over HTTP from the node's address, with a hostPath cache on the node.
Each run applies a fresh ModelService with one replica (a cold cache: the fetch downloads
into it), waits for Ready, scales it to two, and waits for the second pod (a hit: copied
from the cache). Per pod, from its own timestamps: the model-fetch init container's run,
and the pod's creation -> Ready. Writes its section of docs/benchmarks.md (between the
real-node-cache markers) and the raw figures to .cache/bench/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.doc_sections import write_section  # noqa: E402
from tests import external_data  # noqa: E402
from tests.integration import test_real_node as real  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    CRD_PATH,
    DEFAULT_KUBECONFIG,
    Kubectl,
    condition,
    wait_until,
)

BEGIN, END = "<!-- real-node-cache:begin -->", "<!-- real-node-cache:end -->"


def one_run(k: Kubectl, uri: str, sha: str, cache_dir: Path, name: str) -> dict[str, Any]:
    shutil.rmtree(cache_dir / "entries", ignore_errors=True)  # cold: the first pod misses
    model = {"uri": uri, "sha256": sha, "name": name, "cache": {"hostPath": str(cache_dir)}}
    k.apply(real.manifest(name, model), real.NAMESPACE)
    try:
        real.wait_ready(k, name, timeout=600)
        (first,) = real.pods_of(k, name)
        k.run("scale", "msvc", name, "--replicas=2", "-n", real.NAMESPACE)

        def two_ready() -> list[dict[str, Any]] | None:
            pods = real.pods_of(k, name)
            ready = [p for p in pods if condition(p, "Ready").get("status") == "True"]
            return ready if len(ready) == 2 else None

        pods = wait_until(f"2 Ready pods of {name}", two_ready, timeout=600, interval=0.5)
        (second,) = [p for p in pods if p["metadata"]["name"] != first["metadata"]["name"]]
        first = k.get("pod", first["metadata"]["name"], real.NAMESPACE)
        logs = {
            which: k.run(
                "logs", p["metadata"]["name"], "-n", real.NAMESPACE, "-c", "model-fetch"
            ).stdout
            for which, p in (("first", first), ("second", second))
        }
        assert "cache: miss" in logs["first"], logs["first"]
        assert "cache: hit" in logs["second"], logs["second"]
        return {
            "first": real.start_figures(first),
            "second": real.start_figures(second),
            "node": second["spec"]["nodeName"],
        }
    finally:
        k.run("delete", "msvc", name, "-n", real.NAMESPACE, "--wait=true", check=False)


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]

    def med(which: str, key: str) -> float:
        return statistics.median(r[which][key] for r in runs)

    rows = "\n".join(
        f"| {label} | {med(w, 'fetch_s'):.0f} | {med(w, 'created_to_ready_s'):.0f} | "
        f"{', '.join(format(r[w]['created_to_ready_s'], '.0f') for r in runs)} |"
        for w, label in (
            ("first", "first replica: cache miss, downloads"),
            ("second", "second replica: cache hit, copies"),
        )
    )
    ratio = med("second", "created_to_ready_s") / med("first", "created_to_ready_s")
    return f"""{BEGIN}
## The real node: a second replica from the model cache

Measured by `bench/real_node_cache.py` at {result["when"]} (git {result["git"]}), on the real
node of `make cluster-up` with the chart's operator pod. The model: tests/external_data.py's
at F={result["features"]} (`model.onnx` + `weights.bin`, {result["mib"]:.0f} MiB in all) as a
.tar over HTTP from the node's address (Python's http.server, loopback-speed: a slow
registry or S3 would widen the gap), `spec.model.cache.hostPath` on the node. Each of
{len(runs)} runs starts from an empty cache with one replica, then scales to two on the same
node. Seconds from the pods' own timestamps (whole seconds, so +-1 s):

| pod | model-fetch (median) | created -> Ready (median) | created -> Ready (runs) |
| --- | --- | --- | --- |
{rows}

Second / first, created -> Ready: **{ratio:.2f}x**. The miss downloads, checks the sha256,
unpacks and checks the model, then copies the entry into the pod's emptyDir; the hit only
copies (the emptyDir and the cache are different mounts, so no hardlink). Loading the model
(the rest of created -> Ready) is the same for both.
{END}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=8192, help="F: the weights are F x F float32")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args(argv)
    k = Kubectl(DEFAULT_KUBECONFIG)
    if not real.REAL_NODE_FILE.exists() or "REAL_NODE=yes" not in real.REAL_NODE_FILE.read_text():
        print("bench/real_node_cache.py: no real node (make cluster-up on Linux as root); skipped")
        return 0
    out = REPO / ".cache" / "bench"
    files_dir = out / "real-node-cache-files"
    shutil.rmtree(files_dir, ignore_errors=True)
    folder = external_data.write_model(files_dir / "model", features=args.features).parent
    served = files_dir / "served"  # only files: serve_model_files hashes each one
    served.mkdir()
    archive = served / "big.tar"
    with tarfile.open(archive, "w") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f.name)
    mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    node_ip, why_not = real.real_node_ip(k)
    if node_ip is None:
        raise SystemExit(f"bench/real_node_cache.py: the real node is not usable: {why_not}")
    cache_dir = real.node_dir("bench-cache", owner=65532)
    runs = []
    try:
        with (
            real.operator_from_chart(k) as pod,
            real.serve_model_files(node_ip, folder / "model.onnx", served) as files,
        ):
            print(f"operator pod {pod} Ready; model {mib:.0f} MiB", flush=True)
            for i in range(args.runs):
                started = time.monotonic()
                r = one_run(k, files.url("big.tar"), sha, cache_dir, f"bench-cache-{i}")
                print(f"  run {i + 1} ({time.monotonic() - started:.0f} s): first {r['first']}, "
                      f"second {r['second']}", flush=True)  # fmt: skip
                runs.append(r)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017
    result = {"when": when, "git": git, "features": args.features, "mib": mib, "runs": runs}
    raw = out / f"real-node-cache-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"  # noqa: UP017
    raw.write_text(json.dumps(result, indent=1))
    doc = write_section(render(result), BEGIN, END)
    print(f"wrote {doc} (raw {raw})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
