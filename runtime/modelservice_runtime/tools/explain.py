"""`modelservice explain MODEL.onnx --input FILE.npy`: attributions for one input, offline.

The same parameters, defaults and methods as the runtime's explain routes (explain/, and
the model loaded as `modelservice serve` loads it), with each parameter a flag. A tabular
instance prints as a table, largest attributions first (and, with --png, a bar chart); an
image-like instance (two or more axes: C x H x W or H x W) is drawn as a figure: the input
beside its attribution map on a diverging colour scale with a legend (explain_figure.py,
matplotlib: the `explain` extra). Without matplotlib the image gets the plain heat map
written here with zlib alone, red where a patch pushes the explained output up, blue where
it pulls it down.
"""

from __future__ import annotations

import argparse
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from modelservice_runtime.explain.explainer import Explanation, explain_batch
from modelservice_runtime.explain.groups import is_image_like
from modelservice_runtime.explain.methods import METHODS
from modelservice_runtime.explain.params import (
    PREDICTED,
    BadParameter,
    Defaults,
    parse_parameters,
)

HEATMAP_MIN_SIDE = 256  # small images are scaled up (nearest) to at least this many pixels
NPY_MAGIC = b"\x93NUMPY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Defaults()
    p.epilog = (
        "Make a model and an input to try it on: python examples/make_models.py (writes "
        "mlp.onnx and mlp-x.npy, a tabular model and one row; cnn.onnx and image.npy, an "
        "image model and one C x H x W image). The figure needs matplotlib: "
        "pip install 'modelservice[runtime,explain]'."
    )
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model")
    p.add_argument(
        "--input", required=True, metavar="FILE.npy",
        help="a .npy file (numpy.save) holding one instance, shaped like one row of the "
        "model's input without the batch axis (an image: C x H x W), or several on a first "
        "axis",
    )  # fmt: skip
    p.add_argument("--method", choices=METHODS, help=f"default {d.method}")
    p.add_argument("--target", help=f"output index to explain, or {PREDICTED} (default)")
    p.add_argument(
        "--baseline", metavar="NUMBER|FILE.npy",
        help="what a feature is replaced with when left out: a number, or an array shaped "
        "like one instance (default 0)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, help=f"perturbed inputs (default {d.samples})")
    p.add_argument("--seed", type=int, help="seed of sampled methods (default 0)")
    p.add_argument("--output", help="the model output to explain (default: its first)")
    p.add_argument("--patch", metavar="H,W", help="patch size for images (default: 8x8 grid)")
    p.add_argument("--kernel-width", type=float, help="LIME's kernel width (default 0.75)")
    p.add_argument(
        "--max-samples", type=int, default=d.max_samples,
        help=f"cap on perturbed inputs, all instances together (default {d.max_samples})",
    )  # fmt: skip
    p.add_argument("--png", metavar="OUT.png", help="the figure: for an image input its "
                   "attribution map (default: <input>-explain.png), for a tabular one a bar "
                   "chart (default: none); -<i> added per instance")  # fmt: skip
    p.add_argument(
        "--top", type=int, default=20,
        help="features in the table and the bar chart of a tabular input (default 20)",
    )  # fmt: skip


def _raw_parameters(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key in ("method", "samples", "seed", "output", "kernel_width"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    if args.target is not None:
        raw["target"] = PREDICTED if args.target == PREDICTED else _int_or(args.target)
    if args.baseline is not None:
        path = Path(args.baseline)
        raw["baseline"] = (
            np.load(path).tolist() if path.suffix == ".npy" else _float_or(args.baseline)
        )
    if args.patch is not None:
        raw["patch"] = [_int_or(v) for v in args.patch.split(",")]
    return raw


def _int_or(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text  # parse_parameters names the flag and what it expects


def _float_or(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def read_input(path: str) -> np.ndarray:
    """The --input array; SystemExit saying how to make a .npy of what was given."""
    given = Path(path)
    try:
        with given.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise SystemExit(f"--input: {path} does not exist") from None
    except OSError as e:
        raise SystemExit(f"--input: cannot read {path} ({e.strerror})") from None
    if head != NPY_MAGIC:
        load = (
            f"np.loadtxt('{path}', delimiter=',', dtype=np.float32)"
            if given.suffix.lower() in (".csv", ".txt", ".tsv")
            else "your_array"
        )
        raise SystemExit(
            f"--input: {path} is not a .npy file; --input takes an array saved with numpy: "
            f"python -c \"import numpy as np; np.save('x.npy', {load})\""
        )
    try:
        return np.load(given)
    except (OSError, ValueError) as e:
        raise SystemExit(f"--input: cannot read {path} as a .npy array ({e})") from None


def run(args: argparse.Namespace) -> int:
    from modelservice_runtime.serving.explaining import model_runner
    from modelservice_runtime.serving.model import ModelLoadError, OnnxModel
    from modelservice_runtime.settings import Settings
    from modelservice_runtime.tools import explain_figure

    try:
        model = OnnxModel(Settings(model_path=args.model, execution_provider="cpu"))
    except ModelLoadError as e:
        raise SystemExit(f"modelservice explain: {e}") from None
    if len(model.inputs) != 1 or model.inputs[0].dtype.kind not in "fiu":
        raise SystemExit(
            "modelservice explain: explanations need a model with one numeric input; "
            f"this one takes {[s.metadata() for s in model.inputs]}"
        )
    spec = model.inputs[0]
    data = read_input(args.input)
    one = spec.shape[1:] if model.batchable else spec.shape  # one instance's shape
    stacked = data[None] if data.ndim == len(one) else data
    if stacked.ndim != len(one) + 1 or any(
        want not in (-1, got) for want, got in zip(one, stacked.shape[1:], strict=True)
    ):
        raise SystemExit(
            f"--input: an array of shape {list(data.shape)} is neither one instance "
            f"{list(one)} nor a stack of instances {[-1, *one]} of input {spec.name!r} "
            f"{list(spec.shape)} (-1 = any size){_reshape_hint(data, one)}"
        )
    instances = stacked.astype(spec.dtype, copy=False)
    image = is_image_like(instances.shape[1:])
    figure = explain_figure.available()
    if args.png and not image and not figure:
        raise SystemExit(
            f"--png: the bar chart of a tabular input needs matplotlib: {explain_figure.INSTALL}"
        )
    d = Defaults()
    try:
        request = parse_parameters(
            _raw_parameters(args),
            # the default samples is held to the cap, as the server holds it
            defaults=Defaults(
                samples=min(d.samples, args.max_samples),
                max_samples=args.max_samples,
                cap="--max-samples",
            ),
            instance_shape=instances.shape[1:],
            dtype=instances.dtype,
            outputs=model.output_names,
            instances=len(instances),
            name=lambda p: "--" + p.replace("_", "-"),
        )
        result = explain_batch(model_runner(model), instances, request)
    except BadParameter as e:
        raise SystemExit(e.message.replace("parameters.", "--")) from None
    what = Path(args.model).name
    for i, e in enumerate(result.explanations):
        print(_summary(i, e))
        if image:
            path = _png_path(args, i, len(instances))
            if figure:
                assert request.patch is not None  # an image-like instance has patches
                explain_figure.image_figure(path, instances[i], e, request.patch, what)
                print(f"  figure: {path}")
            else:
                write_heatmap(path, instances[i], e.attributions)
                print(f"  heat map: {path} (for the figure with a legend: "
                      f"{explain_figure.INSTALL})")  # fmt: skip
        else:
            print(table(instances[i], request.baseline, e.attributions, args.top))
            if args.png:
                path = _png_path(args, i, len(instances))
                explain_figure.bar_figure(path, instances[i], e, args.top, what)
                print(f"  bar chart: {path}")
    return 0


def _reshape_hint(data: np.ndarray, one: tuple[int, ...]) -> str:
    """What to do with a wrongly shaped input: reshape it, when its values would fit."""
    if any(d < 0 for d in one):
        return ""
    size = math.prod(one)
    if data.size % size:
        return f"; one instance holds {size} values, this array {data.size}"
    shape = ", ".join(str(d) for d in (data.size // size, *one))
    return f"; reshape it: np.save(PATH, x.reshape({shape}))"


def _summary(i: int, e: Explanation) -> str:
    how = "exact" if e.exact else f"sampled, seed {e.seed}"
    head = f"instance {i}: {e.method} ({e.samples} perturbed inputs, {how}), target {e.target}: "
    total = e.attributions.sum()
    if e.method == "shap":  # efficiency: the attributions add up by construction
        return (
            f"{head}prediction {e.prediction:.6g} = base value {e.base_value:.6g} + "
            f"attributions {total:.6g}"
        )
    return (
        f"{head}prediction {e.prediction:.6g}, base value {e.base_value:.6g}, attributions sum "
        f"to {total:.6g} ({e.method}'s add up to prediction - base value only for a linear "
        "model; shap's always do)"
    )


def table(x: np.ndarray, baseline: np.ndarray, attributions: np.ndarray, top: int) -> str:
    """Features by |attribution|, largest first."""
    order = np.argsort(-np.abs(attributions.ravel()), kind="stable")[:top]
    flat_x, flat_b, flat_a = x.ravel(), baseline.ravel(), attributions.ravel()
    lines = [f"  {'feature':>7}  {'value':>12}  {'baseline':>12}  {'attribution':>12}"]
    for j in order:
        lines.append(
            f"  {j:>7}  {float(flat_x[j]):>12.6g}  {float(flat_b[j]):>12.6g}  "
            f"{float(flat_a[j]):>12.6g}"
        )
    if len(flat_a) > top:
        lines.append(f"  ... {len(flat_a) - top} more (--top)")
    return "\n".join(lines)


def _png_path(args: argparse.Namespace, i: int, n: int) -> Path:
    base = (
        Path(args.png)
        if args.png
        else Path(args.input).with_name(Path(args.input).stem + "-explain.png")
    )
    return base if n == 1 else base.with_name(f"{base.stem}-{i}{base.suffix}")


def heatmap_rgb(image: np.ndarray, attributions: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image in grey, red/blue over it by the attribution's sign, as
    opaque as its magnitude relative to the largest."""
    lead = tuple(range(image.ndim - 2))
    grey = image.astype(np.float64).mean(axis=lead) if lead else image.astype(np.float64)
    span = grey.max() - grey.min()
    grey = (grey - grey.min()) / span if span > 0 else np.full_like(grey, 0.5)
    heat = attributions.sum(axis=lead) if lead else attributions
    peak = np.abs(heat).max()
    alpha = (np.abs(heat) / peak if peak > 0 else np.zeros_like(heat))[..., None] * 0.75
    colour = np.where(heat[..., None] >= 0, [1.0, 0.1, 0.1], [0.1, 0.3, 1.0])
    rgb = (1 - alpha) * grey[..., None] + alpha * colour
    scale = max(1, math.ceil(HEATMAP_MIN_SIDE / max(rgb.shape[:2])))
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def write_heatmap(path: Path, image: np.ndarray, attributions: np.ndarray) -> None:
    write_png(path, heatmap_rgb(image, attributions))


def write_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = rgb.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(rgb))
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
