"""Run `modelservice serve` as a real subprocess on a free loopback port (test helper)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from tests.integration.processes import free_port, stop
from tests.waiting import wait_until

# Tests stop servers by SIGTERM: skip the Kubernetes-oriented unready delay unless a test
# asks for it with --shutdown-delay-s (a flag beats the env var).
_QUICK_EXIT = {"MODELSERVICE_SHUTDOWN_DELAY_S": "0"}


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def serve_command() -> list[str]:
    """`modelservice` as installed beside this Python (or the module if not installed)."""
    script = shutil.which("modelservice", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "modelservice_cli"]


@contextmanager
def serve(
    model: Path, *args: str, env: dict[str, str] | None = None, ready_within: float = 60
) -> Iterator[Served]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="modelservice-serve-", suffix=".log")[1])
    cmd = [*serve_command(), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **_QUICK_EXIT, **(env or {})},
        )
    served = Served(proc, port, log)
    try:
        wait_ready(
            served.url,
            lambda: proc.poll() is None,
            ready_within,
            lambda: f"(exit code {proc.returncode}):\n{served.log_tail()}",
        )
        yield served
    finally:
        stop(proc, grace_s=15)
        log.unlink(missing_ok=True)


def wait_ready(
    url: str, alive: Callable[[], bool], within: float, describe: Callable[[], str]
) -> None:
    """Until `url` answers /v2/health/ready with 200; AssertionError with `describe()` (the
    server's log) when the server stops being `alive` first, or after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        if not alive():
            raise AssertionError(f"modelservice serve exited before it was ready {describe()}")
        try:
            if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"modelservice serve was not ready at {url} within {within}s {describe()}"
            )
        time.sleep(0.05)


def cpu_only_onnxruntime(directory: Path) -> dict[str, str]:
    """Env for a `modelservice serve` subprocess whose onnxruntime offers only the CPU
    provider, as the CPU build does (a sitecustomize patching get_available_providers, the
    boundary the runtime asks): refusals of cuda/tensorrt then read the same on a GPU machine."""
    (directory / "sitecustomize.py").write_text(
        "import onnxruntime\n"
        "onnxruntime.get_available_providers = lambda: ['CPUExecutionProvider']\n"
    )
    paths = [str(directory), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-tensor request for input `input`, asking for binary outputs."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


# One series of Prometheus text: its name, its labels if any, its value.
_SERIES = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_in(text: str, name: str, **labels: str) -> float:
    """The sum of the series of `name` in Prometheus text whose labels include `labels`
    (`le` of a bucket is given as the text writes it, "16.0"). AssertionError when no series
    matches: a misspelt name or label never reads as 0."""
    found = [
        float(m["value"])
        for m in _SERIES.finditer(text)
        if m["name"] == name and labels.items() <= dict(_LABEL.findall(m["labels"] or "")).items()
    ]
    assert found, f"{name}{labels or ''} is not on /metrics"
    return sum(found)


def metrics_text(url: str) -> str:
    """The server's /metrics now (a new connection: any worker)."""
    return httpx.get(url + "/metrics", timeout=5).text


def metric(url: str, name: str, **labels: str) -> float:
    """`metric_in` of the server's /metrics now."""
    return metric_in(metrics_text(url), name, **labels)


PENDING = "nv_inference_pending_request_count"  # requests accepted and not yet answered


def wait_pending(url: str, want: float, timeout: float = 20) -> None:
    """Wait until the pending-request gauge reads `want`; fail naming the last reading. The
    gauge counts a request from its submit to its answer, running or queued: the one signal
    that requests have reached the model's queue, whatever the machine's speed."""

    def reads_want() -> bool:
        pending = metric(url, PENDING)
        assert pending == want, f"it reads {pending}"
        return True

    wait_until(f"{PENDING} to read {want}", reads_want, timeout, interval=0.02)


def slow_model(path: Path, depth: int = 128, width: int = 512) -> Path:
    """input FP32 [N, width] -> output, the same values through `depth` MatMuls by the
    identity. A request of a few thousand rows holds a worker for seconds (SLOW_ROWS), one
    row is quick: tests use it to keep requests in flight while they look at the server."""
    from onnx import TensorProto, helper, numpy_helper, save

    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")
    names = ["input", *(f"h{i}" for i in range(depth - 1)), "output"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", [a, "w"], [b]) for a, b in itertools.pairwise(names)],
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])],
        initializer=[eye],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


def rows_to_hold(url: str, seconds: float = 5.0, probe_rows: int = 64) -> int:
    """Rows of one request to the slow_model served at `url` that keep its worker busy for
    about `seconds` on this machine as loaded now: timed on the faster of two probes of
    `probe_rows` (a model's first run is slower: allocations), so a loaded machine gets fewer
    rows and a fast one more (at most 16384, 32 MiB of input). Tests still assert that the
    request was running when they looked."""
    body, headers = binary_body(np.ones((probe_rows, 512), np.float32))
    took = []
    for _ in range(2):
        started = time.monotonic()
        r = httpx.post(url + "/v2/models/slow/infer", content=body, headers=headers, timeout=120)
        took.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
    return int(min(16384, max(probe_rows, probe_rows * seconds / min(took))))
