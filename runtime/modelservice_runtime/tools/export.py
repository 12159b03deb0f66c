"""`modelservice export`: a PyTorch nn.Module factory -> ONNX with a dynamic batch axis.

The exported file is only useful if it computes what the torch module computes, so every
export is followed by a numerics check: torch and onnxruntime run the same random inputs at
batch 1 and at batch 3 (which also proves the batch axis really is dynamic) and the command
fails when the largest absolute difference exceeds `--atol`.

torch is the `export` extra: it is imported inside functions only, so importing this module
(e.g. for `--help`) never needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelservice_runtime.errors import first_line

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
CHECK_BATCH_SIZES = (1, 3)


class ExportError(Exception):
    """A user-facing export failure; the message names the input and what was expected."""


@dataclass(frozen=True)
class PruneReport:
    """What global magnitude pruning achieved over the prunable weights."""

    requested: float
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


@dataclass(frozen=True)
class NumericsReport:
    """Largest |torch - onnxruntime| per checked batch size, over all outputs and samples."""

    max_abs_diff: dict[int, float]
    atol: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return self.worst <= self.atol


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,64,64' -> (1, 3, 64, 64); every dim a positive integer, the first is the batch."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ExportError(
            f"--input-shape: expected comma-separated positive integers like 1,3,64,64, "
            f"got {text!r}"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise ExportError(
            f"--input-shape: expected comma-separated positive integers like 1,3,64,64, "
            f"got {text!r}"
        )
    return dims


def load_factory(spec: str) -> Any:
    """Resolve 'package.module:factory' (attribute paths like 'mod:Zoo.build' allowed).

    The current directory goes on sys.path first, as `python -m` would, so a user's own
    `model.py` next to them is importable without installing it.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ExportError(
            f"MODULE:FACTORY: expected 'package.module:function' (e.g. mymodels:resnet), "
            f"got {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ExportError(
            f"MODULE:FACTORY: cannot import module {module_name!r} (from {spec!r}): {e}"
        ) from e
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ExportError(
                f"MODULE:FACTORY: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


def build_module(spec: str) -> Any:
    """Import and call the factory; it must give a torch.nn.Module (returned in eval mode)."""
    from torch import nn

    factory = load_factory(spec)
    if isinstance(factory, nn.Module):
        module = factory  # the attribute is already a built module
    elif callable(factory):
        try:
            module = factory()
        except Exception as e:
            raise ExportError(
                f"MODULE:FACTORY: calling {spec} with no arguments failed: {type(e).__name__}: {e}"
            ) from e
    else:
        raise ExportError(
            f"MODULE:FACTORY: {spec} is a {type(factory).__name__}, expected a function or "
            f"class returning a torch.nn.Module"
        )
    if not isinstance(module, nn.Module):
        raise ExportError(
            f"MODULE:FACTORY: {spec}() returned a {type(module).__name__}, expected a "
            f"torch.nn.Module"
        )
    return module.eval()


def prune_global(module: Any, amount: float) -> PruneReport:
    """Zero the `amount` fraction of smallest-|w| weights across all Linear/Conv layers.

    Global (not per-layer) L1 pruning keeps the important weights wherever they are. The
    pruning is made permanent (`prune.remove`) so the exported graph holds plain weight
    tensors rather than weight_orig * mask.
    """
    import torch
    from torch import nn
    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise ExportError(f"--prune: expected a fraction in [0, 1), got {amount}")
    prunable = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    params = [
        (m, "weight")
        for m in module.modules()
        if isinstance(m, prunable) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if not params:
        raise ExportError("--prune: the module has no Linear or Conv layers to prune")
    if amount > 0:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        for m, name in params:
            prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    total = sum(m.weight.numel() for m, _ in params)
    return PruneReport(requested=amount, zeros=zeros, total=total)


def _output_names(module: Any, example: Any, output_name: str) -> list[str]:
    """One name for a single-tensor output; name_0, name_1, ... for tuple/list outputs."""
    import torch

    with torch.no_grad():
        out = module(example)
    if isinstance(out, list | tuple):
        return [f"{output_name}_{i}" for i in range(len(out))]
    return [output_name]


def export_module(
    module: Any,
    input_shape: tuple[int, ...],
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """Export `module` for inputs of `input_shape` (first axis = batch, made dynamic)."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*input_shape)
    output_names = _output_names(module, example, output_name)
    dynamic_axes = {input_name: {0: "batch"}} | {n: {0: "batch"} for n in output_names}
    # The TorchScript-based exporter: deterministic, no onnxscript/dynamo quirks, and it
    # honours dynamic_axes exactly.
    torch.onnx.export(
        module,
        (example,),
        str(out),
        input_names=[input_name],
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset_version=opset,
        dynamo=False,
    )
    return out


def check_numerics(
    module: Any,
    onnx_path: str | Path,
    input_shape: tuple[int, ...],
    *,
    input_name: str = "input",
    samples: int = 2,
    atol: float = DEFAULT_ATOL,
    batch_sizes: tuple[int, ...] = CHECK_BATCH_SIZES,
    seed: int = 0,
) -> NumericsReport:
    """Run torch and onnxruntime on the same random inputs; report max |diff| per batch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. an op torch emitted that this onnxruntime lacks
        raise ExportError(
            f"numerics check: onnxruntime cannot load {onnx_path}: {first_line(e)}"
        ) from e
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for batch in batch_sizes:
        worst = 0.0
        for _ in range(max(1, samples)):
            x = torch.randn(batch, *input_shape[1:], generator=gen)
            with torch.no_grad():
                expected = module(x)
            expected_list = list(expected) if isinstance(expected, list | tuple) else [expected]
            try:
                got = sess.run(None, {input_name: x.numpy()})
            except Exception as e:
                raise ExportError(
                    f"numerics check at batch {batch}: onnxruntime failed to run the model: "
                    f"{first_line(e)}"
                ) from e
            if len(got) != len(expected_list):
                raise ExportError(
                    f"numerics check: onnxruntime gave {len(got)} outputs, torch gave "
                    f"{len(expected_list)}"
                )
            for want, have in zip(expected_list, got, strict=True):
                want_np = want.detach().numpy()
                if want_np.shape != have.shape:
                    raise ExportError(
                        f"numerics check at batch {batch}: onnxruntime output shape "
                        f"{list(have.shape)} != torch output shape {list(want_np.shape)} "
                        f"(is the batch axis really dynamic in the model?)"
                    )
                diff = np.abs(want_np.astype(np.float64) - have.astype(np.float64))
                worst = max(worst, float(diff.max()) if diff.size else 0.0)
        diffs[batch] = worst
    return NumericsReport(max_abs_diff=diffs, atol=atol)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Needs the export extra (torch, onnx): pip install 'modelservice[runtime,export]'; "
        "from PyPI on Linux that is a CUDA build of torch, several GB (README.md, Install). "
        "Example: modelservice export tests.modelzoo:mlp --input-shape 1,64 -o mlp.onnx"
    )
    parser.add_argument(
        "factory",
        metavar="MODULE:FACTORY",
        help="import path of a function (or class) returning a torch.nn.Module, "
        "e.g. mymodels:resnet; the current directory is importable",
    )
    parser.add_argument(
        "--input-shape",
        required=True,
        help="example input shape, batch first, e.g. 1,3,64,64 (the batch axis is exported "
        "as dynamic)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version (default %(default)s)"
    )
    parser.add_argument(
        "--input-name", default="input", help="graph input name (default %(default)s)"
    )
    parser.add_argument(
        "--output-name", default="output", help="graph output name (default %(default)s)"
    )
    parser.add_argument(
        "--prune",
        type=float,
        default=0.0,
        metavar="AMOUNT",
        help="before export, zero this fraction (0..1) of the smallest weights globally "
        "across Linear/Conv layers (L1 magnitude pruning; default %(default)s: none)",
    )
    parser.add_argument(
        "--check-samples",
        type=int,
        default=2,
        metavar="N",
        help="random inputs per checked batch size (1 and 3) for the torch-vs-onnxruntime "
        "check; 0 skips the check (default %(default)s)",
    )
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help="largest allowed absolute difference between torch and onnxruntime outputs "
        "(default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ExportError as e:
        print(f"modelservice export: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    shape = parse_input_shape(args.input_shape)
    if args.check_samples < 0:
        raise ExportError(f"--check-samples: expected an integer >= 0, got {args.check_samples}")
    if args.opset < 7:
        raise ExportError(f"--opset: expected an ONNX opset >= 7, got {args.opset}")
    module = build_module(args.factory)

    if args.prune:
        report = prune_global(module, args.prune)
        print(
            f"pruned: {report.zeros}/{report.total} Linear/Conv weights are zero "
            f"(sparsity {report.sparsity:.1%}, requested {report.requested:.1%})"
        )

    try:
        out = export_module(
            module,
            shape,
            args.output,
            opset=args.opset,
            input_name=args.input_name,
            output_name=args.output_name,
        )
    except Exception as e:
        # torch raises many types here (shape errors in forward, unsupported ops, ...).
        raise ExportError(
            f"exporting {args.factory} with --input-shape {args.input_shape} failed: "
            f"{type(e).__name__}: {first_line(e)}"
        ) from e
    dims = ",".join(["batch", *map(str, shape[1:])])
    print(
        f"exported {args.factory} -> {out} (opset {args.opset}, input "
        f"{args.input_name!r} [{dims}], {out.stat().st_size} bytes)"
    )

    if args.check_samples == 0:
        print("numerics check skipped (--check-samples 0)")
        return 0
    numerics = check_numerics(
        module,
        out,
        shape,
        input_name=args.input_name,
        samples=args.check_samples,
        atol=args.atol,
    )
    per_batch = ", ".join(f"batch {b}: {d:.3g}" for b, d in numerics.max_abs_diff.items())
    print(f"max abs diff torch vs onnxruntime: {per_batch} (atol {args.atol:g})")
    if not numerics.ok:
        raise ExportError(
            f"numerics check failed: max abs diff {numerics.worst:.3g} exceeds --atol "
            f"{args.atol:g}; {out} was written but does not match the torch module"
        )
    return 0
