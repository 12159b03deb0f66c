"""`modelservice demo`: the main job end to end, on the embedded local control plane.

Exports a small PyTorch model, starts the local control plane (hack/cluster-up.sh), installs
the CRD, runs the operator, applies examples/cpu-autoscaled.yaml pointed at that model, waits
until the ModelService is Ready and shows its children, then serves the same model on
localhost and answers one real inference request. Everything it started is stopped at the end
(pass --keep to leave the cluster up).

It needs a clone of the repository (the control-plane scripts, the CRD and the examples live
there) and the `export` and `operator` extras; `make demo` provides all of that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEMO_NAME = "demo-mlp"
DEMO_NAMESPACE = "default"
EXAMPLE = "examples/cpu-autoscaled.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository root (default: found from the current directory)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the control plane running at the end"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ready")


def _step(n: int, text: str) -> None:
    print(f"\n==> [{n}/7] {text}", flush=True)


def find_repo(start: Path) -> Path:
    for candidate in (start, *start.parents):
        if (candidate / "hack" / "cluster-up.sh").exists() and (candidate / "crds").is_dir():
            return candidate
    raise SystemExit(
        "modelservice demo: run it from a clone of the repository (`make demo`); "
        f"no hack/cluster-up.sh found above {start}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise SystemExit(f"modelservice demo: gave up after {timeout:.0f}s waiting for {what}")


@contextmanager
def background(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run `cmd` with output to `log`; stop it by PID (SIGTERM, then SIGKILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def export_demo_model(out: Path) -> tuple[Path, str]:
    import torch
    from modelservice_runtime.tools.export import export_module
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    path = export_module(module, (1, 4), out)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def demo_manifest(repo: Path, model: Path, sha256: str) -> dict[str, Any]:
    """examples/cpu-autoscaled.yaml, pointed at the model this demo exported."""
    import yaml

    manifest = yaml.safe_load((repo / EXAMPLE).read_text())
    manifest["metadata"] = {"name": DEMO_NAME, "namespace": DEMO_NAMESPACE}
    manifest["spec"]["model"] = {"uri": model.resolve().as_uri(), "sha256": sha256}
    return manifest


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def run(args: argparse.Namespace) -> int:
    repo = (args.repo or find_repo(Path.cwd())).resolve()
    work = repo / ".cache" / "demo"
    work.mkdir(parents=True, exist_ok=True)
    kubeconfig = repo / ".cache" / "cluster" / "kubeconfig"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{repo / '.cache' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    venv_bin = Path(sys.executable).parent
    modelservice = str(venv_bin / "modelservice")

    def kubectl(*argv: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["kubectl", *argv], env=env, input=stdin, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    _step(1, "export a PyTorch MLP (4 -> 16 -> 3) to ONNX")
    model, sha256 = export_demo_model(work / "model.onnx")
    print(f"    {model}  sha256={sha256[:16]}...")

    _step(2, "start the local control plane (etcd, apiserver, controllers, scheduler, kwok)")
    subprocess.run([str(repo / "hack" / "cluster-up.sh")], env=env, check=True)
    print(kubectl("get", "nodes", "-o", "wide"))

    try:
        _step(3, "install the ModelService CRD")
        print(kubectl("apply", "-f", str(repo / "crds")).strip())
        kubectl("wait", "--for=condition=Established", "crd/modelservices.serving.modelservice.io")

        _step(4, "run the operator (log: .cache/demo/operator.log)")
        operator_cmd = [modelservice, "operator", "--standalone", "--all-namespaces"]
        with background(operator_cmd, work / "operator.log", env):
            _step(5, f"apply {EXAMPLE} as {DEMO_NAME}, wait until Ready")
            manifest = demo_manifest(repo, model, sha256)
            print(kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).strip())

            def phase() -> str:
                return kubectl(
                    "get", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "-o", "jsonpath={.status.phase}"
                )

            wait_for(
                f"ModelService {DEMO_NAME} to be Ready",
                lambda: phase() == "Ready",
                args.timeout,
                interval=2,
            )
            print(kubectl("get", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE))
            selector = f"app.kubernetes.io/instance={DEMO_NAME}"
            print(kubectl("get", "deploy,svc,hpa,pdb,pods", "-n", DEMO_NAMESPACE, "-l", selector))
            kubectl("delete", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "--wait=true")

        _step(6, "serve the same model on localhost")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve_cmd = [
            modelservice,
            "serve",
            str(model),
            "--name",
            DEMO_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with background(serve_cmd, work / "serve.log", env):

            def ready() -> bool:
                try:
                    urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2)
                    return True
                except OSError:
                    return False

            wait_for(f"the runtime on {base} to be ready", ready, 60, interval=0.5)
            print(f"    GET {base}/v2/models/{DEMO_NAME}")
            print("   ", http_json(f"{base}/v2/models/{DEMO_NAME}"))

            _step(7, "one real inference request (Open Inference Protocol V2)")
            request = {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [0.1, 0.2, 0.3, 0.4],
                    }
                ]
            }
            print(f"    POST {base}/v2/models/{DEMO_NAME}/infer {json.dumps(request)}")
            print("   ", http_json(f"{base}/v2/models/{DEMO_NAME}/infer", request))
    finally:
        if args.keep:
            print(
                f"\nThe control plane is still up: export KUBECONFIG={kubeconfig}; "
                "stop it with `make cluster-down`."
            )
        else:
            print("\n==> cleaning up: stopping the local control plane")
            subprocess.run([str(repo / "hack" / "cluster-down.sh")], env=env, check=False)
    print("\nDemo complete.")
    return 0
