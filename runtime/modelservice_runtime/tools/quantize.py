"""`modelservice quantize`: dynamic int8 quantization with onnxruntime, with the cost shown.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, so it
needs no calibration data. It is not free: outputs move. The command therefore reports what
it bought (file size before/after) and what it cost (max abs output difference and, for
classifier-like outputs, how often the top-1 class stays the same) on random inputs built
from the model's own input metadata.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelservice_runtime.errors import first_line
from modelservice_runtime.fetch.atomic import atomic_target

DEFAULT_SAMPLES = 16

# onnxruntime type strings -> numpy dtype names, for building sample inputs.
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class QuantizeError(Exception):
    """A user-facing quantization failure; the message names the input and what was wrong."""


@dataclass
class OutputDiff:
    """Accuracy change of one output over all samples."""

    name: str
    max_abs_diff: float = 0.0
    top1_agree: int = 0
    top1_total: int = 0  # 0 when the output is not classifier-like

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agree / self.top1_total if self.top1_total else None


@dataclass
class QuantizeReport:
    size_before: int
    size_after: int
    samples: int
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else 0.0


def _session(path: Path, what: str) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QuantizeError(f"{what} {path}: onnxruntime cannot load it: {first_line(e)}") from e


def check_input_model(path: Path) -> None:
    """Fail early, naming IN.onnx, if it is missing or not an ONNX model."""
    if not path.exists():
        raise QuantizeError(f"IN.onnx: {path} does not exist")
    if not path.is_file():
        raise QuantizeError(f"IN.onnx: {path} is not a file")
    import onnx

    try:
        # The path form also handles models over 2 GiB (external data beside the file).
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise QuantizeError(f"IN.onnx: {path} is not a valid ONNX model: {first_line(e)}") from e


def sample_inputs(sess: Any, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` random feeds from the session's input metadata; dynamic/unknown dims -> 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds: list[dict[str, Any]] = []
    for _ in range(count):
        feed: dict[str, Any] = {}
        for inp in sess.get_inputs():
            dtype_name = _ORT_TO_NUMPY.get(inp.type)
            if dtype_name is None:
                raise QuantizeError(
                    f"input {inp.name!r}: type {inp.type} is not supported for sample "
                    f"inputs (expected a numeric or bool tensor)"
                )
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (inp.shape or [])]
            dtype = np.dtype(dtype_name)
            if dtype == np.bool_:
                value = rng.integers(0, 2, size=shape).astype(np.bool_)
            elif np.issubdtype(dtype, np.integer):
                # Small non-negative ints are safe for indices (Gather/Embedding) too.
                value = rng.integers(0, 2, size=shape).astype(dtype)
            else:
                value = rng.standard_normal(size=shape).astype(dtype)
            feed[inp.name] = value
        feeds.append(feed)
    return feeds


def compare_outputs(before: Any, after: Any, feeds: list[dict[str, Any]]) -> list[OutputDiff]:
    """Max |float - int8| per output; top-1 agreement for [..., classes>1] float outputs."""
    import numpy as np

    names = [o.name for o in before.get_outputs()]
    diffs = [OutputDiff(name=n) for n in names]
    for feed in feeds:
        want = before.run(names, feed)
        have = after.run(names, feed)
        for d, w, h in zip(diffs, want, have, strict=True):
            w = np.asarray(w)
            h = np.asarray(h)
            if w.shape != h.shape:
                raise QuantizeError(
                    f"output {d.name!r}: quantized shape {list(h.shape)} != original "
                    f"{list(w.shape)}"
                )
            if not np.issubdtype(w.dtype, np.number) or w.size == 0:
                continue
            diff = np.abs(w.astype(np.float64) - h.astype(np.float64))
            d.max_abs_diff = max(d.max_abs_diff, float(diff.max()))
            if np.issubdtype(w.dtype, np.floating) and w.ndim >= 2 and w.shape[-1] > 1:
                w_top = w.reshape(-1, w.shape[-1]).argmax(axis=-1)
                h_top = h.reshape(-1, h.shape[-1]).argmax(axis=-1)
                d.top1_agree += int((w_top == h_top).sum())
                d.top1_total += int(w_top.size)
    return diffs


def quantize_model(
    src: str | Path,
    dst: str | Path,
    *,
    per_channel: bool = False,
    samples: int = DEFAULT_SAMPLES,
) -> QuantizeReport:
    """Quantize `src` to `dst` (weights int8, activations dynamic) and measure the change."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    check_input_model(src)
    if src.resolve() == dst.resolve():
        raise QuantizeError("OUT.onnx: must differ from IN.onnx (the original is compared)")
    original = _session(src, "IN.onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)

    # onnxruntime logs a "consider pre-processing" warning on every call via the root
    # logger; it is advice, not a problem with the user's model.
    root = logging.getLogger()
    level = root.level
    # Written beside dst and renamed at the end: a failed run never leaves a partial OUT.onnx.
    with atomic_target(dst) as tmp:
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8
            )
        except Exception as e:
            raise QuantizeError(f"quantizing {src} failed: {first_line(e)}") from e
        finally:
            root.setLevel(level)
        quantized = _session(tmp, "quantized model")
        report = QuantizeReport(
            size_before=src.stat().st_size, size_after=tmp.stat().st_size, samples=samples
        )
        if samples > 0:
            report.outputs = compare_outputs(original, quantized, sample_inputs(original, samples))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="float ONNX model")
    parser.add_argument("output", metavar="OUT.onnx", help="where to write the int8 model")
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="one scale per output channel instead of per tensor (usually more accurate)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help="random sample inputs used to measure the output change; 0 skips it",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.samples < 0:
            raise QuantizeError(f"--samples: expected an integer >= 0, got {args.samples}")
        report = quantize_model(
            args.input, args.output, per_channel=args.per_channel, samples=args.samples
        )
    except QuantizeError as e:
        print(f"modelservice quantize: error: {e}", file=sys.stderr)
        return 1
    print(
        f"quantized {args.input} -> {args.output} (dynamic int8"
        f"{', per-channel' if args.per_channel else ''})"
    )
    print(
        f"size: {report.size_before} -> {report.size_after} bytes "
        f"({report.ratio:.2f}x, {1 - report.ratio:.0%} smaller)"
    )
    for out in report.outputs:
        line = f"output {out.name!r}: max abs diff {out.max_abs_diff:.4g}"
        if out.top1_agreement is not None:
            line += (
                f", top-1 agreement {out.top1_agreement:.1%} ({out.top1_agree}/{out.top1_total})"
            )
        print(f"{line} over {report.samples} random samples")
    return 0
