"""The settings of `modelservice serve`: one table, read by everything that names them.

Each row is one setting: the runtime's Settings field, its flag, its environment variable
(MODELSERVICE_<FIELD>, so the operator can configure the container with env alone), its
type, default, bounds and help. From this table come the runtime's argument parser
(`add_arguments`) and its settings model (modelservice_runtime/settings.py), the operator's
rendering of the runtime container (`command_line`, and the env names it sets, in
modelservice_operator/render.py and spec.py) and the spec's descriptions of the fields it
passes on (`describe`). Precedence, applied by the runtime: flag > env > default.

Pure standard library: both images carry it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "MODELSERVICE_"
Floats = tuple[float, ...]
IntPair = tuple[int, int]


def parse_floats(text: str) -> Floats:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(
            f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}"
        ) from None
    if not values:
        raise ValueError("expected at least one number")
    return values


def parse_int_pair(text: str) -> IntPair:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"expected two integers >= 1 like 8,8, got {text!r}")
    return values[0], values[1]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


# The text a flag or variable holds -> its value, and back (what the operator renders).
_PARSE: dict[Any, Callable[[str], Any]] = {
    Floats: parse_floats,
    IntPair: parse_int_pair,
    bool: parse_bool,
}
_FORMAT: dict[Any, Callable[[Any], str]] = {
    Floats: lambda v: ",".join(repr(float(x)) for x in v),
    IntPair: lambda v: ",".join(str(int(x)) for x in v),
}


@dataclass(frozen=True)
class Setting:
    """One setting of `modelservice serve`."""

    field: str  # the runtime's Settings field
    type: (
        Any  # int, float, str, bool, Path, Floats or IntPair (values are never None but by default)
    )
    default: Any
    help: str  # what it does, without its default (shown beside it) or its flag
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = ""  # "" = --<field with dashes>; None: no flag (env only, or positional)
    env: str = ""  # "" = MODELSERVICE_<FIELD>
    operator: bool = False  # the operator sets it on the runtime container from the spec
    secret: bool = False  # never logged or shown

    @property
    def option(self) -> str | None:
        """The flag, e.g. --max-batch-size (None for a setting without one)."""
        if self.flag is None:
            return None
        return self.flag or "--" + self.field.replace("_", "-")

    @property
    def variable(self) -> str:
        """The environment variable, e.g. MODELSERVICE_MAX_BATCH_SIZE."""
        return self.env or ENV_PREFIX + self.field.upper()

    @property
    def switch(self) -> bool:
        """A flag that only turns something on (--no-cpu-arena)."""
        return self.type is bool and self.default is False

    def parse(self, text: str) -> Any:
        """The value of a flag's or variable's text; ValueError naming what was expected."""
        return _PARSE.get(self.type, self.type)(text)

    def format(self, value: Any) -> str:
        return _FORMAT.get(self.type, str)(value)

    def accepts(self) -> str:
        """What the bounds allow, for messages: 'one of (...)', '0..65535', '>= 0', '> 0'."""
        if self.choices:
            return f"one of {self.choices}"
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum:g}..{self.maximum:g}"
        if self.minimum is not None:
            return f">= {self.minimum:g}"
        if self.above is not None:
            return f"> {self.above:g}"
        return "valid"

    @property
    def name(self) -> str:
        """How messages name it: the flag, else the variable."""
        return self.option or self.variable


SETTINGS: tuple[Setting, ...] = (
    Setting("model_path", Path, None, "the ONNX model file to serve, or its folder (its "
            "model.onnx or only .onnx file, external data files beside it)", flag=None,
            env=ENV_PREFIX + "MODEL", operator=True),
    Setting("name", str, "", "served model name; empty: the model file's stem", operator=True),
    Setting("host", str, "0.0.0.0", "listen address", operator=True),
    Setting("port", int, 8080, "listen port", minimum=0, maximum=65535, operator=True),
    Setting("grpc_port", int, 8081, "gRPC port of the Open Inference Protocol "
            "(inference.GRPCInferenceService, as tritonclient.grpc speaks it, and "
            "grpc.health.v1); 0 = no gRPC", minimum=0, maximum=65535, operator=True),
    Setting("workers", int, 1, "server processes sharing the port (one process is held to "
            "about one core by Python's GIL), each with its own onnxruntime session (what "
            "one costs in memory: docs/runtime.md); 0 = one per CPU, but one on a GPU",
            minimum=0, operator=True),
    Setting("max_batch_size", int, 32, "largest batch that dynamic batching assembles; 0 or 1 "
            "disables batching", minimum=0, operator=True),
    Setting("max_batch_delay_us", int, 500, "longest time, in microseconds, the first request "
            "of a batch waits for more", minimum=0, operator=True),
    Setting("max_queue_size", int, 1024, "requests waiting for a model run before more are "
            "refused with 503", minimum=1),
    Setting("max_request_bytes", int, 64 * 1024 * 1024, "larger request bodies get 413",
            minimum=1),
    Setting("request_timeout_s", float, 60.0, "a request that stops arriving this long gets "
            "408; a connection silent, or not reading its answer, this long is closed",
            above=0),
    Setting("intra_op_threads", int, 0, "onnxruntime intra-op threads; 0 = onnxruntime's "
            "default (language models: a thread per available CPU, or one where the model is "
            "too small to gain from more, timed at start)", minimum=0, operator=True),
    Setting("inter_op_threads", int, 0, "onnxruntime inter-op threads; 0 = onnxruntime's "
            "default", minimum=0, operator=True),
    Setting("graph_optimization_level", str, "all", "onnxruntime graph optimizations",
            choices=("disable", "basic", "extended", "all")),
    Setting("execution_provider", str, "auto", "onnxruntime execution provider; auto = CUDA "
            "where this onnxruntime has it, else CPU",
            choices=("auto", "cpu", "cuda", "tensorrt"), operator=True),
    Setting("gpu_mem_limit", int, 0, "CUDA memory arena limit in bytes; 0 = none", minimum=0),
    Setting("normalize_mean", Floats, None, "per-channel mean subtracted from the first float "
            "input (channels on axis 1)", operator=True),
    Setting("normalize_std", Floats, None, "per-channel standard deviation the input is then "
            "divided by: as many values as the mean, none of them zero", operator=True),
    Setting("no_cpu_arena", bool, False, "disable onnxruntime's CPU memory arena"),
    Setting("prepack_weights", str, "auto", "onnxruntime's prepacking of weights into a "
            "private copy per process (faster batched matrix products on CPU); off keeps "
            "external data mapped from its file, one copy in the page cache for all workers; "
            "auto = off for a model with external data, on otherwise (docs/runtime.md, Memory)",
            choices=("auto", "on", "off")),
    Setting("warmup", bool, True, "run the model once at load, before ready"),
    Setting("format", str, "auto", "what the model is: onnx (one forward pass a request), "
            "genai (a language model folder served with onnxruntime-genai and the OpenAI API), "
            "embedding (an ONNX text encoder folder served on POST /v1/embeddings), "
            "auto = genai for a folder with genai_config.json, embedding for a folder with "
            "tokenizer.json and 1_Pooling/config.json",
            choices=("auto", "onnx", "genai", "embedding"), operator=True),
    Setting("pooling", str, "auto", "embedding models: token vectors -> one vector; auto = "
            "as the folder's 1_Pooling/config.json says", choices=("auto", "mean", "cls",
            "last", "max")),
    Setting("embedding_normalize", str, "auto", "embedding models: L2-normalise the vectors; "
            "auto = when the folder's modules.json lists a Normalize module",
            choices=("auto", "on", "off"), flag="--normalize"),
    Setting("generation_batch_size", int, 16, "language models: generations that run together "
            "in the onnxruntime-genai engine's batch (its KV cache rows); more wait, up to "
            "--max-queue-size", minimum=1),
    Setting("max_generated_tokens", int, 0, "language models: the largest max_tokens a request "
            "may ask for; 0 = the model's context length", minimum=0),
    Setting("prefill_budget", int, 512, "language models: prompt tokens prefilled per engine "
            "step while other generations decode; a longer prompt goes in over several steps "
            "(chunked prefill), so running streams wait for at most about this much",
            minimum=16),
    Setting("prefix_caching", bool, True, "language models: a prompt that starts like a "
            "running or an earlier request's (32 tokens or more: a system prompt, a chat's "
            "history) reuses that start's KV cache instead of prefilling it"),
    # Explanations (docs/explain.md): the routes, a request's defaults, the cap and the queue.
    Setting("explain", bool, True, "serve explanations on POST /v1/models/M:explain and "
            "/v2/models/M/explain; off, they answer 404", operator=True),
    Setting("explain_method", str, "shap", "explanation method of a request that names none",
            choices=("shap", "lime", "occlusion"), operator=True),
    Setting("explain_samples", int, 2048, "perturbed inputs per explanation of a request that "
            "names no samples (KernelSHAP is exact when all coalitions fit)", minimum=1,
            operator=True),
    Setting("explain_max_samples", int, 16384, "most perturbed inputs one explain request may "
            "make, all its instances together; more get 400", minimum=1),
    Setting("explain_patch", IntPair, None, "patch H,W that groups image-like inputs (2 or more "
            "axes) of a request that names no patch; none: an 8x8 grid", operator=True),
    Setting("explain_max_queue", int, 8, "explain requests waiting for the one explanation "
            "that runs at a time, before more get 503", minimum=0),
    Setting("auth_token", str, None, "bearer token every request but the health probes and "
            "/metrics must carry", flag=None, operator=True, secret=True),
    Setting("auth_token_file", Path, None, "file holding the bearer token (over "
            f"{ENV_PREFIX}AUTH_TOKEN)"),
    Setting("api_keys", str, None, "API keys, each with optional request and token budgets "
            "per minute, as JSON {\"keys\": [{\"id\", \"key\", \"requestsPerMinute\", "
            "\"tokensPerMinute\"}]} (docs/llm.md, Keys and budgets)", flag=None, operator=True,
            secret=True),
    Setting("api_keys_file", Path, None, "file holding the API keys JSON (over "
            f"{ENV_PREFIX}API_KEYS)"),
    Setting("log_level", str, "info", "log level",
            choices=("critical", "error", "warning", "info", "debug")),
    Setting("shutdown_delay_s", float, 2.0, "on SIGTERM, seconds to stay up, unready, before "
            "draining", minimum=0),
    Setting("graceful_timeout_s", float, 25.0, "longest wait for in-flight requests when "
            "stopping"),
    Setting("worker_timeout_s", float, 30.0, "with several workers: one whose event loop is "
            "stuck this long is replaced", above=0),
)  # fmt: skip
BY_FIELD: Mapping[str, Setting] = {s.field: s for s in SETTINGS}
MODEL = BY_FIELD["model_path"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `modelservice serve`; every default is None, so that env vars can fill what
    no flag gives (see modelservice_runtime/settings.py)."""
    parser.add_argument(
        "model_path", nargs="?", metavar="MODEL.onnx", help=f"{MODEL.help}; env {MODEL.variable}"
    )
    for s in SETTINGS:
        if s.option is None:
            continue
        shown = "" if s.default in (None, "") or s.type is bool else f" (default {s.default})"
        choices = f" ({'|'.join(s.choices)})" if s.choices else ""
        help_text = f"{s.help}{choices}{shown}; env {s.variable}"
        if s.switch:
            parser.add_argument(
                s.option, dest=s.field, action="store_const", const=True, default=None,
                help=help_text,
            )  # fmt: skip
        elif s.type is bool:
            parser.add_argument(
                s.option, dest=s.field, action=argparse.BooleanOptionalAction, default=None,
                help=f"{help_text} (default on)",
            )  # fmt: skip
        else:
            metavar = "X,Y,..." if s.type is Floats else None
            parser.add_argument(
                s.option, dest=s.field, default=None, metavar=metavar, help=help_text
            )


def command_line(values: Mapping[str, Any]) -> list[str]:
    """The `modelservice serve` arguments that set `values` (Settings field -> value), in
    the table's order: the model path first, then each flag."""
    unknown = set(values) - set(BY_FIELD)
    if unknown:
        raise ValueError(f"not settings of modelservice serve: {sorted(unknown)}")
    args = [MODEL.format(values["model_path"])] if "model_path" in values else []
    for s in SETTINGS:
        if s.field not in values or s.field == "model_path":
            continue
        if s.option is None:
            raise ValueError(f"{s.field} has no flag; set {s.variable} instead")
        value = values[s.field]
        if s.switch:
            args += [s.option] if value else []
        elif s.type is bool:
            args.append(s.option if value else "--no-" + s.option[2:])
        else:
            args += [s.option, s.format(value)]
    return args


def describe(field: str, *more: str) -> str:
    """The description of a spec field that the operator passes on as setting `field`: its
    help, then what the spec adds."""
    s = BY_FIELD[field]
    return " ".join([s.help[0].upper() + s.help[1:] + ".", *more])


def auto_workers(cpus: int, gpu: bool) -> int:
    """What --workers 0 means: one server process per CPU, but one on a GPU, where each
    worker would hold its own copy of the model in GPU memory."""
    return 1 if gpu else max(1, cpus)
