"""Runtime settings: one object built from `modelservice serve` flags and MODELSERVICE_* env.

Every flag has an environment variable MODELSERVICE_<FLAG> (upper snake case; the model
path is MODELSERVICE_MODEL) so the operator can configure the container with env alone.
Precedence: flag > env > default. Parsing happens here, once, never at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ENV_PREFIX = "MODELSERVICE_"


class SettingsError(ValueError):
    """A flag or env var has a value the runtime cannot use; the message names it."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(
            f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}"
        ) from None
    if not values:
        raise ValueError("expected at least one number")
    return values


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Settings:
    model_path: Path
    name: str = ""
    model_version: str = "1"
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    max_batch_size: int = 32
    max_batch_delay_us: int = 500
    max_queue_size: int = 1024
    max_request_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 60.0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    execution_provider: str = "auto"
    gpu_mem_limit: int = 0
    cpu_arena: bool = True
    normalize_mean: tuple[float, ...] | None = None
    normalize_std: tuple[float, ...] | None = None
    auth_token: str | None = field(default=None, repr=False)  # never logged
    log_level: str = "info"
    warmup: bool = True
    shutdown_delay_s: float = 2.0
    graceful_timeout_s: float = 25.0
    worker_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", Path(self.model_path).stem)
        checks: list[tuple[bool, str]] = [
            (self.port < 0 or self.port > 65535, f"--port must be 0..65535, got {self.port}"),
            (self.workers < 0, f"--workers must be >= 0 (0 = one per CPU), got {self.workers}"),
            (self.max_batch_size < 0, "--max-batch-size must be >= 0"),
            (self.max_batch_delay_us < 0, "--max-batch-delay-us must be >= 0"),
            (self.max_queue_size < 1, "--max-queue-size must be >= 1"),
            (self.max_request_bytes < 1, "--max-request-bytes must be >= 1"),
            (self.request_timeout_s <= 0, "--request-timeout-s must be > 0"),
            (self.intra_op_threads < 0, "--intra-op-threads must be >= 0"),
            (self.inter_op_threads < 0, "--inter-op-threads must be >= 0"),
            (self.gpu_mem_limit < 0, "--gpu-mem-limit must be >= 0 bytes"),
            (self.shutdown_delay_s < 0, "--shutdown-delay-s must be >= 0"),
            (self.worker_timeout_s <= 0, "--worker-timeout-s must be > 0"),
            (
                self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS,
                f"--graph-optimization-level must be one of {GRAPH_OPTIMIZATION_LEVELS}",
            ),
            (
                self.log_level.lower() not in LOG_LEVELS,
                f"--log-level must be one of {LOG_LEVELS}, got {self.log_level!r}",
            ),
            (
                self.execution_provider not in EXECUTION_PROVIDERS,
                f"--execution-provider must be one of {EXECUTION_PROVIDERS}",
            ),
            (
                (self.normalize_mean is None) != (self.normalize_std is None),
                "--normalize-mean and --normalize-std must be given together",
            ),
            (
                self.normalize_mean is not None
                and self.normalize_std is not None
                and len(self.normalize_mean) != len(self.normalize_std),
                "--normalize-mean and --normalize-std must have the same number of values",
            ),
            (
                self.normalize_std is not None and any(s == 0 for s in self.normalize_std),
                "--normalize-std values must be non-zero",
            ),
        ]
        for failed, message in checks:
            if failed:
                raise SettingsError(message)

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


# flag -> (Settings field, parser of the env/flag text, help)
_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--name", "name", str, "served model name (default: the file stem)"),
    ("--host", "host", str, "listen address (default 0.0.0.0)"),
    ("--port", "port", int, "listen port (default 8080)"),
    ("--workers", "workers", int, "server processes sharing the port (1); 0 = one per CPU"),
    ("--max-batch-size", "max_batch_size", int, "dynamic batching limit; 0 or 1 disables"),
    ("--max-batch-delay-us", "max_batch_delay_us", int, "longest wait to fill a batch (500)"),
    ("--max-queue-size", "max_queue_size", int, "queued requests before 503 (1024)"),
    ("--max-request-bytes", "max_request_bytes", int, "larger bodies get 413 (64 MiB)"),
    (
        "--request-timeout-s",
        "request_timeout_s",
        float,
        "a request that stops arriving this long gets 408; a connection silent, or not "
        "reading its answer, this long is closed (60)",
    ),
    ("--intra-op-threads", "intra_op_threads", int, "onnxruntime intra-op threads (0=auto)"),
    ("--inter-op-threads", "inter_op_threads", int, "onnxruntime inter-op threads (0=auto)"),
    ("--graph-optimization-level", "graph_optimization_level", str, "disable|basic|extended|all"),
    ("--execution-provider", "execution_provider", str, "auto|cpu|cuda|tensorrt"),
    ("--gpu-mem-limit", "gpu_mem_limit", int, "CUDA arena limit in bytes (0 = none)"),
    ("--normalize-mean", "normalize_mean", _floats, "per-channel mean, e.g. 0.485,0.456,0.406"),
    ("--normalize-std", "normalize_std", _floats, "per-channel std, e.g. 0.229,0.224,0.225"),
    ("--auth-token-file", "auth_token_file", str, "file holding the bearer token"),
    ("--log-level", "log_level", str, "debug|info|warning|error (default info)"),
    ("--shutdown-delay-s", "shutdown_delay_s", float, "on SIGTERM, seconds unready first (2)"),
    ("--graceful-timeout-s", "graceful_timeout_s", float, "longest drain of in-flight (25)"),
    (
        "--worker-timeout-s",
        "worker_timeout_s",
        float,
        "with several workers: one whose event loop is stuck this long is replaced (30)",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `modelservice serve`; defaults are None so env vars can fill them."""
    parser.add_argument(
        "model", nargs="?", metavar="MODEL.onnx", help="model file (or env MODELSERVICE_MODEL)"
    )
    for flag, dest, _, help_text in _OPTIONS:
        parser.add_argument(
            flag, dest=dest, default=None, help=f"{help_text}; env {_env_name(flag)}"
        )
    parser.add_argument(
        "--no-cpu-arena",
        dest="no_cpu_arena",
        action="store_const",
        const=True,
        default=None,
        help="disable onnxruntime's CPU memory arena; env MODELSERVICE_NO_CPU_ARENA",
    )
    parser.add_argument(
        "--warmup",
        dest="warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the model once at load, before ready (default on); env MODELSERVICE_WARMUP",
    )


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags over MODELSERVICE_* env over defaults; SettingsError names the culprit."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    def pick(flag: str, dest: str, parse: Callable[[str], Any]) -> Any:
        raw, source = getattr(args, dest, None), flag
        if raw is None:
            source = _env_name(flag)
            raw = env.get(source)
        if raw is None:
            return None
        try:
            return parse(raw) if isinstance(raw, str) else raw
        except ValueError as e:
            raise SettingsError(f"{source}: {e}") from None

    for flag, dest, parse, _ in _OPTIONS:
        value = pick(flag, dest, parse)
        if value is not None:
            values[dest] = value

    model = getattr(args, "model", None) or env.get(ENV_PREFIX + "MODEL")
    if not model:
        raise SettingsError("no model: pass MODEL.onnx or set MODELSERVICE_MODEL")
    values["model_path"] = Path(model)

    no_arena = pick("--no-cpu-arena", "no_cpu_arena", _bool)
    if no_arena is not None:
        values["cpu_arena"] = not no_arena
    warmup = pick("--warmup", "warmup", _bool)
    if warmup is not None:
        values["warmup"] = warmup

    token_file = values.pop("auth_token_file", None)
    if token_file:
        try:
            values["auth_token"] = Path(token_file).read_text().strip()
        except OSError as e:
            raise SettingsError(
                f"--auth-token-file: cannot read {token_file} ({e.strerror})"
            ) from None
    elif env.get(ENV_PREFIX + "AUTH_TOKEN"):
        values["auth_token"] = env[ENV_PREFIX + "AUTH_TOKEN"].strip()
    if "auth_token" in values and not values["auth_token"]:
        raise SettingsError("the auth token is empty; expected a non-empty bearer token")

    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})
