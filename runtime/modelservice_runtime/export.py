"""`modelservice export`: a PyTorch nn.Module factory -> ONNX with a dynamic batch axis."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def export_module(
    module: Any,
    input_shape: tuple[int, ...],
    out: str | Path,
    *,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """Export `module` for inputs of `input_shape` (first axis = batch, made dynamic)."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*input_shape)
    torch.onnx.export(
        module,
        (example,),
        str(out),
        input_names=[input_name],
        output_names=[output_name],
        dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("factory", metavar="MODULE:FACTORY")
    parser.add_argument("--input-shape", required=True)
    parser.add_argument("-o", "--output", required=True)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
