"""The `modelservice` console script.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so one missing
extra (torch, kopf) never breaks the other commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

_RUNTIME = "modelservice_runtime"

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (f"{_RUNTIME}.process.launch", "run the inference runtime for an ONNX model"),
    "fetch": (f"{_RUNTIME}.fetch.command", "download or copy a model atomically and verify it"),
    "digest": (f"{_RUNTIME}.tools.digest", "print the sha256 of a file or the set digest of a dir"),
    "export": (f"{_RUNTIME}.tools.export", "export a PyTorch module to ONNX"),
    "quantize": (f"{_RUNTIME}.tools.quantize", "int8-quantize an ONNX model"),
    "export-llm": (
        f"{_RUNTIME}.tools.export_llm",
        "a local Hugging Face language model -> an onnxruntime-genai folder",
    ),
    "operator": ("modelservice_operator.cli", "run the Kubernetes operator (kopf)"),
    "activator": (
        "modelservice_operator.activator",
        "hold HTTP and gRPC requests for ModelServices scaled to zero until a pod is Ready "
        "(behind the Gateway and the models' Services; installed by the chart with "
        "activator.enabled)",
    ),
    "demo": (
        f"{_RUNTIME}.tools.demo",
        "the whole flow on a local Kubernetes control plane it starts (make demo): export a "
        "model, run the operator, apply a ModelService, wait for Ready, answer one request; "
        "needs a clone of the repository, Go and the export and operator extras",
    ),
    "explain": (
        f"{_RUNTIME}.tools.explain",
        "attributions for one input: a table, or a heat map PNG for an image",
    ),
}


def _missing_extra(command: str, e: ImportError) -> SystemExit:
    extra = {
        "operator": "operator",
        "activator": "operator",
        "export": "export",
        "quantize": "export",
        "export-llm": "export",
        "explain": "runtime,explain",
    }.get(command, "runtime")
    return SystemExit(
        f"modelservice {command}: missing dependency ({e.name or e}); "
        f"install it with: pip install 'modelservice[{extra}]'"
    )


def _load(command: str) -> ModuleType:
    module_name, _ = COMMANDS[command]
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise _missing_extra(command, e) from e


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelservice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen command's module is imported: its arguments are added on demand.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["operator"]:
        # kopf owns the operator's flags (--help too); pass them through untouched.
        operator = _load("operator")
        try:
            return int(operator.run_kopf(argv[1:]) or 0)
        except ImportError as e:  # kopf itself is imported inside run_kopf
            raise _missing_extra("operator", e) from e
    args = build_parser(argv).parse_args(argv)
    try:
        return int(_load(args.command).run(args) or 0)
    except ImportError as e:  # heavy dependencies (torch, onnx) are imported inside `run`
        raise _missing_extra(args.command, e) from e


if __name__ == "__main__":
    sys.exit(main())
