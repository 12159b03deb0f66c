"""`modelservice demo`: the main job end to end, on the embedded local control plane.

Exports a small PyTorch model, starts the local control plane (hack/cluster-up.sh), installs
the CRD and the operator, applies examples/cpu-autoscaled.yaml pointed at that model, waits
until the ModelService is Ready, shows its children, and answers one real inference request.

Where the control plane has its real node (Linux, root: hack/node-up.sh), that is the whole
user path: the operator runs as a pod from the Helm chart (`make deploy`), the runtime pod
runs the runtime image (`make images`), its `model-fetch` init container downloads the model
over HTTP from a server on the node's address, Ready means the model loaded in a container,
and the request goes through the Service's ClusterIP (kube-proxy) to the pod, whose name is
printed. Without a real node the pods are kwok fakes: the demo says so, runs the operator
locally, and answers from a local `modelservice serve` instead.

On the real node it then shows a canary through the Gateway that hack/gateway-up.sh runs
(Traefik): a second model given 20% of the requests, 100 requests sent to the Gateway's
address with the ModelService's host name, and how many each revision answered.

Everything it started is stopped at the end (pass --keep to leave the cluster up). It needs a
clone of the repository and the `export` and `operator` extras; `make demo` provides all that.
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

from modelservice_cli import runtime_paths

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
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for Ready (default %(default)s)",
    )


def _step(n: int, text: str) -> None:
    print(f"\n==> [{n}] {text}", flush=True)


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


def export_demo_model(out: Path, seed: int = 0) -> tuple[Path, str]:
    import torch
    from modelservice_runtime.tools.export import export_module
    from torch import nn

    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    path = export_module(module, (1, 4), out)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def demo_manifest(uri: str, sha256: str, repo: Path) -> dict[str, Any]:
    """examples/cpu-autoscaled.yaml, pointed at the model this demo exported."""
    import yaml

    manifest = yaml.safe_load((repo / EXAMPLE).read_text())
    manifest["metadata"] = {"name": DEMO_NAME, "namespace": DEMO_NAMESPACE}
    manifest["spec"]["model"] = {"uri": uri, "sha256": sha256}
    # The example normalizes 3 image channels (ImageNet); the demo's MLP takes 4 features, and
    # a real runtime refuses the mismatch at start (kwok's fake pods never noticed).
    manifest["spec"]["runtime"].pop("normalize", None)
    # A quarter core per replica, so a rollout's surge pod fits beside the operator on a
    # 2-core node; the example's 1 CPU is sized for resnet.
    manifest["spec"]["resources"]["requests"]["cpu"] = "250m"
    return manifest


def infer_request() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
        ]
    }


@contextmanager
def file_server(directory: Path, host: str) -> Iterator[str]:
    """Serve `directory` over HTTP on host (the node's address); yields the base URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def success_count(metrics_text: str, model: str) -> float:
    """The runtime's nv_inference_request_success for `model` in a /metrics page."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("nv_inference_request_success{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def http_json(url: str, body: dict[str, Any] | None = None, host: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if host is not None:
        headers["Host"] = host
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


class Demo:
    """The steps, with the kubectl and paths they share."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repo = (args.repo or find_repo(Path.cwd())).resolve()
        self.work = self.repo / ".cache" / "demo"
        self.work.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = self.repo / ".cache" / "cluster" / "kubeconfig"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.repo / '.cache' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.modelservice = str(Path(sys.executable).parent / "modelservice")

    def kubectl(self, *argv: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["kubectl", *argv], env=self.env, input=stdin, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(argv)} failed: {result.stderr.strip()}")
        return result.stdout

    def real_node_ip(self) -> str | None:
        """The InternalIP of the real node (label type=real), or None if there is none."""
        out = self.kubectl(
            "get", "nodes", "-l", "type=real",
            "-o", 'jsonpath={.items[*].status.addresses[?(@.type=="InternalIP")].address}',
        )  # fmt: skip
        return out.split()[0] if out.split() else None

    def phase(self) -> str:
        return self.kubectl(
            "get", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "-o", "jsonpath={.status.phase}"
        )

    def apply_and_wait(self, manifest: dict[str, Any]) -> None:
        print(self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).strip())
        wait_for(
            f"ModelService {DEMO_NAME} to be Ready (kubectl describe msvc {DEMO_NAME})",
            lambda: self.phase() == "Ready",
            self.args.timeout,
            interval=2,
        )
        print(self.kubectl("get", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE))
        selector = f"app.kubernetes.io/instance={DEMO_NAME}"
        print(self.kubectl("get", "deploy,svc,hpa,pdb", "-n", DEMO_NAMESPACE, "-l", selector))
        print(self.kubectl("get", "pods", "-o", "wide", "-n", DEMO_NAMESPACE, "-l", selector))

    def on_real_node(self, model: Path, sha256: str, node_ip: str) -> None:
        _step(3, "install the CRD and the operator from the Helm chart (make deploy)")
        print(self.kubectl("apply", "-f", str(self.repo / "crds")).strip())
        self.kubectl("wait", "--for=condition=Established", f"crd/{CRD}")
        subprocess.run(["make", "-C", str(self.repo), "deploy"], env=self.env, check=True)
        print(self.kubectl("get", "pods", "-o", "wide", "-n", OPERATOR_NAMESPACE))

        # One file server for both models: the primary's URI must not change when the
        # canary is added (that would roll the primary's pods).
        canary_model, canary_sha256 = export_demo_model(self.work / "model-canary.onnx", seed=1)
        with file_server(model.parent, node_ip) as base_url:
            uri = f"{base_url}/{model.name}"
            _step(4, f"apply {EXAMPLE} as {DEMO_NAME}, the model from {uri}; wait until Ready")
            manifest = demo_manifest(uri, sha256, self.repo)
            self.apply_and_wait(manifest)
            self.through_the_service(node_ip)
            canary = {"uri": f"{base_url}/{canary_model.name}", "sha256": canary_sha256}
            self.canary_through_gateway(manifest, canary)

    def through_the_service(self, node_ip: str) -> None:
        service = json.loads(
            self.kubectl("get", "svc", DEMO_NAME, "-n", DEMO_NAMESPACE, "-o", "json")
        )
        port = service["spec"]["ports"][0]["port"]
        base = f"http://{service['spec']['clusterIP']}:{port}"
        selector = f"app.kubernetes.io/instance={DEMO_NAME}"
        pods_json = self.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-o", "json", "-l", selector)
        pods = json.loads(pods_json)["items"]
        # Not a pod being deleted (one from an earlier run may still be draining).
        ready = [
            p
            for p in pods
            if p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
        ]
        target = ready[0]["spec"]["containers"][0]["ports"][0]["containerPort"]

        def counts() -> dict[str, float]:
            out = {}
            for pod in ready:
                url = f"http://{pod['status']['podIP']}:{target}/metrics"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    out[pod["metadata"]["name"]] = success_count(resp.read().decode(), DEMO_NAME)
            return out

        _step(5, f"the model's metadata through the Service ({base}, kube-proxy)")
        print("   ", http_json(f"{base}/v2/models/{DEMO_NAME}"))
        _step(6, "one real inference request through the Service (Open Inference Protocol V2)")
        before = counts()
        print(f"    POST {base}/v2/models/{DEMO_NAME}/infer {json.dumps(infer_request())}")
        print("   ", http_json(f"{base}/v2/models/{DEMO_NAME}/infer", infer_request()))
        after = counts()
        answered = [name for name in after if after[name] > before.get(name, 0)]
        print(f"    answered by pod {', '.join(answered) or '(unknown)'} on node {node_ip}")

    def status(self) -> dict[str, Any]:
        obj = json.loads(self.kubectl("get", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "-o", "json"))
        return obj.get("status") or {}

    def cluster_env(self, *names: str) -> list[str]:
        """Values hack/cluster-env.sh sets (where the local control plane's facts live)."""
        script = 'HACK_DIR="$1/hack"; source "$1/hack/cluster-env.sh"; shift; '
        script += 'for n in "$@"; do printf "%s\\n" "${!n}"; done'
        done = subprocess.run(["bash", "-c", script, "bash", str(self.repo), *names],
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout.splitlines()

    def canary_through_gateway(self, manifest: dict[str, Any], canary: dict[str, str]) -> None:
        namespace, name = self.cluster_env("GATEWAY_NAMESPACE", "GATEWAY_NAME")
        where = f"{namespace}/{name}"
        found = self.kubectl("get", "gateway", name, "-n", namespace, "-o", "json",
                             "--ignore-not-found")  # fmt: skip
        if not found.strip():
            print(f"\n    No Gateway {where} (hack/gateway-up.sh did not run): no canary step.")
            return
        gateway = json.loads(found)
        _step(7, f"a canary with 20% of the requests, through the Gateway {where} (Traefik)")
        manifest["spec"]["canary"] = {"model": canary, "trafficPercent": 20}
        manifest["spec"]["gateway"] = {"name": name, "namespace": namespace}
        print(self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).strip())
        wait_for(
            "the canary Ready and the route weighted 80/20",
            lambda: (self.status().get("canary") or {}).get("canaryWeight") == 20,
            self.args.timeout,
            interval=2,
        )
        selector = f"app.kubernetes.io/instance={DEMO_NAME}"
        print(self.kubectl("get", "deploy,httproute", "-n", DEMO_NAMESPACE, "-l", selector))
        host = self.status()["gatewayHost"]
        address = gateway["status"]["addresses"][0]["value"]
        port = gateway["spec"]["listeners"][0]["port"]
        url = f"http://{address}:{port}/v2/models/{DEMO_NAME}/infer"

        def answers(n: int) -> dict[str, int]:
            """How many of n requests got each output (an HTTP error is an OSError)."""
            seen: dict[str, int] = {}
            for _ in range(n):
                out = http_json(url, infer_request(), host=host)["outputs"][0]["data"]
                key = json.dumps([round(v, 4) for v in out])
                seen[key] = seen.get(key, 0) + 1
            return seen

        def both_answer() -> bool:
            try:
                return len(answers(20)) == 2
            except OSError:
                return False

        # Traefik takes up a route change at its next rebuild (at most every 2 s), after the
        # status says so: until then it answers 503 or sends by the route's first weights.
        wait_for(f"the Gateway to send {host} to both revisions", both_answer, 30, interval=0.5)
        print(f"    100 x POST {url}  (Host: {host})")
        counted = answers(100)
        for key, n in sorted(counted.items(), key=lambda kv: -kv[1]):
            print(f"    {n:3d} answered {key}")
        print("    (the two models' outputs differ: 80 from the primary, 20 from the canary)")
        print("    roll back: the same manifest without spec.canary")
        del manifest["spec"]["canary"]
        print(self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest)).strip())

    def on_fake_nodes(self, model: Path, sha256: str) -> None:
        print(
            "\n    No real node on this host (see .cache/cluster/real-node): the pods below are"
            "\n    kwok fakes, nothing runs in them; the request is answered by a local runtime."
        )
        _step(3, "install the CRD; run the operator locally (log: .cache/demo/operator.log)")
        print(self.kubectl("apply", "-f", str(self.repo / "crds")).strip())
        self.kubectl("wait", "--for=condition=Established", f"crd/{CRD}")
        operator_cmd = [self.modelservice, "operator", "--standalone", "--all-namespaces"]
        with background(operator_cmd, self.work / "operator.log", self.env):
            _step(4, f"apply {EXAMPLE} as {DEMO_NAME} on the fake nodes, wait until Ready")
            manifest = demo_manifest(model.resolve().as_uri(), sha256, self.repo)
            manifest["spec"]["nodeSelector"] = {"type": "kwok"}
            manifest["spec"]["tolerations"] = [
                {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
            ]
            self.apply_and_wait(manifest)
            self.kubectl("delete", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "--wait=true")

        _step(5, "serve the same model on localhost")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        # HTTP on a free port, no gRPC: 8081 may be taken on the user's machine.
        serve_cmd = [self.modelservice, "serve", str(model), "--name", DEMO_NAME,
                     "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0"]  # fmt: skip
        with background(serve_cmd, self.work / "serve.log", self.env):

            def ready() -> bool:
                try:
                    urllib.request.urlopen(f"{base}{runtime_paths.HEALTH_READY}", timeout=2)
                    return True
                except OSError:
                    return False

            wait_for(f"the runtime on {base} to be ready", ready, 60, interval=0.5)
            _step(6, "one real inference request (Open Inference Protocol V2)")
            print(f"    POST {base}/v2/models/{DEMO_NAME}/infer {json.dumps(infer_request())}")
            print("   ", http_json(f"{base}/v2/models/{DEMO_NAME}/infer", infer_request()))

    def cleanup(self, node_ip: str | None) -> None:
        if self.args.keep:
            print(
                f"\nThe control plane is still up: export KUBECONFIG={self.kubeconfig}; "
                "stop it with `make cluster-down`."
            )
            return
        print("\n==> cleaning up: the demo's objects, the operator, the local control plane")
        if node_ip:
            subprocess.run(
                ["kubectl", "delete", "msvc", DEMO_NAME, "-n", DEMO_NAMESPACE, "--ignore-not-found",
                 "--wait=true", "--timeout=60s"], env=self.env, check=False,
            )  # fmt: skip
            subprocess.run(
                ["helm", "uninstall", "modelservice-operator", "-n", OPERATOR_NAMESPACE],
                env=self.env, check=False, capture_output=True,
            )  # fmt: skip
        for script in ("cluster-down.sh", "docker-down.sh"):
            subprocess.run([str(self.repo / "hack" / script)], env=self.env, check=False)


CRD = "modelservices.serving.modelservice.io"
OPERATOR_NAMESPACE = "modelservice-system"


def run(args: argparse.Namespace) -> int:
    demo = Demo(args)
    _step(1, "export a PyTorch MLP (4 -> 16 -> 3) to ONNX")
    model, sha256 = export_demo_model(demo.work / "model.onnx")
    print(f"    {model}  sha256={sha256[:16]}...")

    _step(2, "start the local control plane (etcd, apiserver, controllers, kwok, the real node)")
    subprocess.run([str(demo.repo / "hack" / "cluster-up.sh")], env=demo.env, check=True)
    print(demo.kubectl("get", "nodes", "-o", "wide"))
    node_ip = demo.real_node_ip()
    try:
        if node_ip:
            demo.on_real_node(model, sha256, node_ip)
        else:
            demo.on_fake_nodes(model, sha256)
    finally:
        demo.cleanup(node_ip)
    print("\nDemo complete.")
    return 0
