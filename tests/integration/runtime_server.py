"""Run `modelservice serve` as a real subprocess on a free loopback port (test helper)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from tests.integration.processes import free_port, stop

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
        deadline = time.monotonic() + ready_within
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"modelservice serve exited with {proc.returncode} before it was ready:\n"
                    + served.log_tail()
                )
            try:
                if httpx.get(served.url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"modelservice serve was not ready on port {port} within {ready_within}s:\n"
                    + served.log_tail()
                )
            time.sleep(0.05)
        yield served
    finally:
        stop(proc, grace_s=15)
        log.unlink(missing_ok=True)


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
