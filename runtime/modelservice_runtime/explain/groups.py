"""Feature groups: which elements of one instance are perturbed together.

A tabular instance (fewer than two axes longer than 1: [F], [1, F]) has one group per
element. An instance with two or more such axes (an image, channels first: C x H x W, or
H x W) is cut into patches over its last two axes, each patch spanning every leading axis
(all channels of those pixels), so the count of groups, and with it the samples a method
needs, stays bounded whatever the resolution.
"""

from __future__ import annotations

import math

import numpy as np

# Without a patch size, an image-like instance is cut into this many patches a side.
DEFAULT_GRID = 8


def is_image_like(shape: tuple[int, ...]) -> bool:
    """Instances with two or more axes longer than 1 are grouped by patches over the last
    two; [1, F] (a model without a batch axis takes one row like that) stays tabular."""
    return len(shape) >= 2 and sum(d > 1 for d in shape) >= 2


def default_patch(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The patch of a DEFAULT_GRID x DEFAULT_GRID grid over the last two axes, or None for
    tabular instances."""
    if not is_image_like(shape):
        return None
    h, w = shape[-2:]
    return max(1, math.ceil(h / DEFAULT_GRID)), max(1, math.ceil(w / DEFAULT_GRID))


def feature_labels(shape: tuple[int, ...], patch: tuple[int, int] | None) -> np.ndarray:
    """An int array shaped like the instance: the group of each element, 0..d-1.

    Patches that do not divide the image evenly leave smaller patches at the bottom and
    right edges."""
    if patch is None or not is_image_like(shape):
        return np.arange(math.prod(shape), dtype=np.intp).reshape(shape)
    ph, pw = patch
    h, w = shape[-2:]
    per_row = math.ceil(w / pw)
    grid = (np.arange(h) // ph)[:, None] * per_row + (np.arange(w) // pw)[None, :]
    return np.ascontiguousarray(np.broadcast_to(grid.astype(np.intp), shape))


def group_count(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if labels.size else 0
