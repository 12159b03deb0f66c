"""The figures of `modelservice explain --png`: what a person reads, and puts in a report.

An image: three panels side by side, the input as it is, the attribution map alone, and the
map over the input in grey, each map on one diverging colour scale centred on zero (red
pushes the explained output up, blue pulls it down) with its legend, under a title naming
the method, the target, the prediction and the base value. The map is drawn smooth: each
patch's attribution sits at the patch's centre and is interpolated between centres, so a
32-pixel patch is not a 32-pixel block. A tabular input: a bar chart of the largest
attributions, coloured by sign, each bar labelled with its feature's index and value.

matplotlib is the `explain` extra of the command line (`pip install
'modelservice[runtime,explain]'`), never in the runtime image; without it
`modelservice explain` falls back to the plain heat map of tools/explain.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from modelservice_runtime.explain.explainer import Explanation

INSTALL = "pip install 'modelservice[runtime,explain]'"
POSITIVE, NEGATIVE = "#c0392b", "#2e6fbf"  # the bar chart's colours, as RdBu_r's ends
CMAP = "RdBu_r"  # diverging: blue < 0 < red, white at zero
DPI = 100


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Layout:
    """Where the panels landed in the PNG, in its pixels (left, top, right, bottom)."""

    size: tuple[int, int]
    panels: dict[str, tuple[int, int, int, int]]


def title(e: Explanation, what: str) -> str:
    return (
        f"{e.method} attributions of {what}: target {e.target}, prediction "
        f"{e.prediction:.4g}, base value {e.base_value:.4g}"
    )


def smooth_map(heat: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(H, W) per-pixel attributions, constant over each patch -> the same map
    interpolated linearly between patch centres (edge patches may be smaller)."""
    h, w = heat.shape
    ph, pw = patch
    rows, cols = range(0, h, ph), range(0, w, pw)
    grid = np.array([[heat[r : r + ph, c : c + pw].mean() for c in cols] for r in rows])
    row_centres = np.array([(r + min(r + ph, h)) / 2 for r in rows])
    col_centres = np.array([(c + min(c + pw, w)) / 2 for c in cols])
    y, x = np.arange(h) + 0.5, np.arange(w) + 0.5
    across = np.stack([np.interp(x, col_centres, row) for row in grid])  # (grid rows, W)
    return np.stack([np.interp(y, row_centres, across[:, j]) for j in range(w)], axis=1)


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An instance (C x H x W or H x W) as imshow takes it, and its colour map."""
    x = image.astype(np.float64)
    if x.ndim == 3 and x.shape[0] == 3:
        rgb = np.moveaxis(x, 0, -1)
        lo, hi = rgb.min(), rgb.max()
        if lo < 0 or hi > 1:  # not in [0, 1]: stretched, so it still shows
            rgb = (rgb - lo) / (hi - lo) if hi > lo else np.full_like(rgb, 0.5)
        return rgb, None
    grey = x.reshape(-1, *x.shape[-2:]).mean(axis=0)
    return grey, "gray"


def _pixels(fig, ax) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    x0, y0, x1, y1 = ax.get_position().extents
    w, h = fig.get_size_inches() * fig.dpi
    return round(x0 * w), round((1 - y1) * h), round(x1 * w), round((1 - y0) * h)


def image_figure(
    path: Path, image: np.ndarray, e: Explanation, patch: tuple[int, int], what: str
) -> Layout:
    """The input, the map and the map over the input, on one colour scale, to `path`."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    heat = e.attributions.reshape(-1, *image.shape[-2:]).sum(axis=0)
    smooth = smooth_map(heat, patch)
    peak = float(np.abs(smooth).max()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-peak, vmax=peak)
    shown, cmap = _display(image)
    grey = _display(image.reshape(-1, *image.shape[-2:]).mean(axis=0))[0]

    fig = Figure(figsize=(12, 4.4), dpi=DPI)
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.02, right=0.86, top=0.84, bottom=0.04, wspace=0.06)
    panels = {}
    for ax, name in zip(axes, ("input", "attributions", "overlay"), strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        panels[name] = ax
    panels["input"].imshow(shown, cmap=cmap, interpolation="nearest")
    panels["input"].set_title(f"input {image.shape[-2]}x{image.shape[-1]}")
    mapped = panels["attributions"].imshow(smooth, cmap=CMAP, norm=norm, interpolation="bilinear")
    panels["attributions"].set_title(f"attribution map ({patch[0]}x{patch[1]} patches)")
    panels["overlay"].imshow(grey, cmap="gray", interpolation="nearest")
    panels["overlay"].imshow(smooth, cmap=CMAP, norm=norm, alpha=0.6, interpolation="bilinear")
    panels["overlay"].set_title("map over the input (grey)")
    bar = fig.colorbar(mapped, cax=fig.add_axes((0.875, 0.08, 0.015, 0.72)))
    bar.set_label("attribution per pixel\nred: raises the output, blue: lowers it")
    fig.suptitle(title(e, what), fontsize=12)
    fig.savefig(path, dpi=DPI)
    w, h = (fig.get_size_inches() * DPI).round().astype(int)
    return Layout((int(w), int(h)), {n: _pixels(fig, ax) for n, ax in panels.items()})


def bar_figure(path: Path, x: np.ndarray, e: Explanation, top: int, what: str) -> Layout:
    """The `top` largest |attributions| of a tabular instance as horizontal bars."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    a, values = e.attributions.ravel(), x.ravel()
    order = np.argsort(-np.abs(a), kind="stable")[:top][::-1]  # largest at the top
    fig = Figure(figsize=(8, 1.2 + 0.32 * len(order)), dpi=DPI)
    ax = fig.subplots()
    ax.barh(
        range(len(order)),
        a[order],
        color=[POSITIVE if a[j] >= 0 else NEGATIVE for j in order],
    )
    ax.set_yticks(range(len(order)), [f"feature {j} = {values[j]:.4g}" for j in order])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("attribution")
    more = f" (top {len(order)} of {a.size})" if a.size > len(order) else ""
    ax.set_title(title(e, what) + more, fontsize=10)
    ax.legend(
        handles=[
            Patch(color=POSITIVE, label="raises the output"),
            Patch(color=NEGATIVE, label="lowers the output"),
        ],
        loc="lower right",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    w, h = (fig.get_size_inches() * DPI).round().astype(int)
    return Layout((int(w), int(h)), {"bars": _pixels(fig, ax)})
