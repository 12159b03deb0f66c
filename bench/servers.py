"""The systems under test, each started as a subprocess on 127.0.0.1 and stopped by its PID.

Plugging in another server is one `ServerSpec`. Our runtime is the console script from the
project venv (`OUR_RUNTIME`); KServe runs from its own venv because it pins its own
fastapi/pydantic; the naive baseline runs from the project venv.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.models import BenchModel

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".cache" / "venv"
OUR_RUNTIME = [str(VENV / "bin" / "modelservice"), "serve"]
CPUS = len(os.sched_getaffinity(0))
KSERVE_VENV = REPO / ".cache" / "bench-kserve-venv"
# Pinned: the bench and tests/integration/test_grpc.py run this client and server.
KSERVE_PACKAGES = ["kserve==0.21.0", "onnxruntime==1.32.0"]
STARTUP_TIMEOUT_S = 120.0


@dataclass
class ServerSpec:
    """How to start one system for one model, and which bodies it is measured with."""

    key: str  # stable id used in results, e.g. "ours-batch"
    label: str  # shown in the report
    system: str  # "ours" | "kserve" | "naive"
    batching: bool
    bodies: tuple[str, ...]
    argv_for_port: list[str]  # "{port}" is replaced by the chosen port
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/v2/health/ready"
    workers: int = 1  # server processes

    def argv(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.argv_for_port]


def _workers_suffix(workers: int) -> tuple[str, str]:
    """(key suffix, label suffix) for a multi-process configuration."""
    return ("", "") if workers == 1 else (f"-w{workers}", f", {workers} workers")


def our_runtime(
    model: BenchModel, batching: bool, max_batch_size: int = 32, workers: int = 1
) -> ServerSpec:
    batch = str(max_batch_size) if batching else "1"
    key_suffix, label_suffix = _workers_suffix(workers)
    argv = [
        *OUR_RUNTIME,
        str(model.path),
        "--name", model.name,
        "--host", "127.0.0.1",
        "--port", "{port}",
        "--max-batch-size", batch,
        "--workers", str(workers),
        "--grpc-port", "0",  # REST only here; bench/grpc.py measures gRPC beside it
        "--log-level", "warning",
    ]  # fmt: skip
    return ServerSpec(
        key=("ours-batch" if batching else "ours-nobatch") + key_suffix,
        label=f"modelservice (batching {'on, max ' + batch if batching else 'off'}{label_suffix})",
        system="ours",
        batching=batching,
        bodies=("json", "binary"),
        argv_for_port=argv,
        workers=workers,
    )


def kserve(model: BenchModel, workers: int = 1) -> ServerSpec:
    key_suffix, _ = _workers_suffix(workers)
    argv = [
        str(KSERVE_VENV / "bin" / "python"),
        str(REPO / "bench" / "kserve_server.py"),
        "--http_port", "{port}",
        "--enable_grpc", "false",
        "--enable_latency_logging", "false",
        "--workers", str(workers),
    ]  # fmt: skip
    env = {
        "BENCH_MODEL_PATH": str(model.path),
        "BENCH_MODEL_NAME": model.name,
        "BENCH_INTRA_OP_THREADS": "0" if workers == 1 else str(max(1, CPUS // workers)),
    }
    return ServerSpec(
        key="kserve" + key_suffix,
        label="KServe ModelServer" + ("" if workers == 1 else f" ({workers} workers)"),
        system="kserve",
        batching=False,
        bodies=("json", "binary"),
        argv_for_port=argv,
        env=env,
        workers=workers,
    )


def naive(model: BenchModel) -> ServerSpec:
    argv = [
        str(VENV / "bin" / "python"),
        str(REPO / "bench" / "naive_server.py"),
        str(model.path),
        "--name", model.name,
        "--port", "{port}",
    ]  # fmt: skip
    return ServerSpec(
        key="naive",
        label="naive FastAPI",
        system="naive",
        batching=False,
        bodies=("json",),
        argv_for_port=argv,
    )


def ensure_kserve_venv(log: Path) -> str:
    """Create .cache/bench-kserve-venv (kserve, onnxruntime) if missing; return kserve's version."""
    python = KSERVE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('kserve'))"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    print(f"creating {KSERVE_VENV} (pip install {' '.join(KSERVE_PACKAGES)}) ...", flush=True)
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *KSERVE_PACKAGES],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds used so far by `pid` and its live descendants."""
    return cpu_of(_proc_tree(pid))


def cpu_of(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds used so far by these processes (each by itself)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / tick  # utime
        system += int(fields[12]) / tick  # stime
    return user, system


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds used so far by `pid` and its live descendants."""
    return sum(cpu_times(pid))


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """Resident memory (VmRSS, or VmHWM for the peak) of `pid` and descendants, MiB."""
    total_kib = 0
    for p in _proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


class RunningServer:
    """A started server: `with RunningServer(spec, log_dir) as s: s.url ...`."""

    def __init__(self, spec: ServerSpec, log_dir: Path, cpus: str | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{spec.key}-{self.port}.log"
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RunningServer:
        argv = self.spec.argv(self.port)
        if self.cpus:
            argv = ["taskset", "-c", self.cpus, *argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env},
            cwd=REPO,
            start_new_session=True,  # its own process group: we stop it and its workers by PID
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = self.url + self.spec.ready_path
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.label}: exited with code {self.proc.returncode} before "
                    f"{url} was ready; log: {self.log_path}\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.spec.label}: {url} not ready within {STARTUP_TIMEOUT_S:.0f}s "
            f"(last: {last}); log: {self.log_path}\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server's process group (the PID we started leads it), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        finally:
            self._log.close()
