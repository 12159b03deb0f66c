"""An explain request's parameters, validated: each error names the parameter.

The same rules serve the HTTP routes (names like `parameters.samples`) and the command line
(`--samples`): `name` says how the caller spells a parameter. Defaults come from the server's
settings (`Defaults`), which the operator renders from spec.explainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelservice_runtime.explain.groups import (
    default_patch,
    feature_labels,
    group_count,
    is_image_like,
)
from modelservice_runtime.explain.methods import (
    DEFAULT_KERNEL_WIDTH,
    METHODS,
    KernelShap,
    Lime,
    Method,
    exact_shap_fits,
    make_method,
)

PARAMETERS = ("method", "target", "baseline", "samples", "seed", "output", "patch", "kernel_width")
PREDICTED = "predicted"
DEFAULT_SEED = 0


class BadParameter(ValueError):
    """A parameter has a value the explainer cannot use; `parameter` is its name."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True)
class Defaults:
    """What a request that names no method, samples or patch gets, and the cap."""

    method: str = "shap"
    samples: int = 2048
    max_samples: int = 16384
    patch: tuple[int, int] | None = None  # None: groups.default_patch
    cap: str = "--explain-max-samples"  # how messages name max_samples (serve's flag)


@dataclass(frozen=True)
class ExplainRequest:
    method: Method
    target: int | None  # None: the predicted class of each instance
    baseline: np.ndarray  # shaped like one instance, the input's dtype
    baseline_echo: Any  # the baseline as the request gave it (a number or nested lists)
    samples: int
    seed: int
    output: str
    patch: tuple[int, int] | None
    labels: np.ndarray  # the group of each element of an instance
    groups: int

    def rows(self) -> int:
        """Perturbed inputs of one instance (the instance and the baseline aside)."""
        return self.method.rows(self.groups, self.samples)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_parameters(
    raw: Any,
    *,
    defaults: Defaults,
    instance_shape: tuple[int, ...],
    dtype: np.dtype,
    outputs: Sequence[str],
    instances: int,
    name: Callable[[str], str] = lambda p: f"parameters.{p}",
    ignore: Sequence[str] = (),
) -> ExplainRequest:
    """Validate `raw` (the request's parameters object, or None) for instances of
    `instance_shape`; BadParameter names the first bad one. `ignore`: keys another part of
    the protocol owns (V2's binary_data_output)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise BadParameter("parameters", f"parameters must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(PARAMETERS) - set(ignore))
    if unknown:
        raise BadParameter(
            unknown[0],
            f"{name(unknown[0])}: unknown parameter; expected some of {list(PARAMETERS)}",
        )

    method_name = raw.get("method", defaults.method)
    if method_name not in METHODS:
        raise BadParameter(
            "method", f"{name('method')}: expected one of {list(METHODS)}, got {method_name!r}"
        )

    target = raw.get("target", PREDICTED)
    if target == PREDICTED:
        target = None
    elif not _int(target) or target < 0:
        raise BadParameter(
            "target",
            f"{name('target')}: expected an output index (an integer >= 0) or "
            f"{PREDICTED!r}, got {target!r}",
        )

    baseline_echo = raw.get("baseline", 0)
    baseline = _baseline(baseline_echo, instance_shape, dtype, name("baseline"))

    samples = raw.get("samples", defaults.samples)
    if not _int(samples) or samples < 1:
        raise BadParameter(
            "samples", f"{name('samples')}: expected a positive integer, got {samples!r}"
        )
    if samples > defaults.max_samples:
        raise BadParameter(
            "samples",
            f"{name('samples')}: {samples} is over the limit of {defaults.max_samples} "
            f"perturbed inputs per request ({defaults.cap})",
        )

    seed = raw.get("seed", DEFAULT_SEED)
    if not _int(seed) or not 0 <= seed < 2**63:
        raise BadParameter(
            "seed", f"{name('seed')}: expected an integer in 0..2^63-1, got {seed!r}"
        )

    output = raw.get("output", outputs[0] if outputs else None)
    if output not in outputs:
        raise BadParameter(
            "output",
            f"{name('output')}: expected one of the model's outputs {list(outputs)}, "
            f"got {output!r}",
        )

    patch = _patch(raw.get("patch"), defaults.patch, instance_shape, name("patch"))

    width = raw.get("kernel_width", DEFAULT_KERNEL_WIDTH)
    if "kernel_width" in raw and method_name != Lime.name:
        raise BadParameter("kernel_width", f"{name('kernel_width')}: applies to method 'lime' only")
    if not _number(width) or not math.isfinite(width) or width <= 0:
        raise BadParameter(
            "kernel_width", f"{name('kernel_width')}: expected a number > 0, got {width!r}"
        )

    labels = feature_labels(instance_shape, patch)
    groups = group_count(labels)
    method = make_method(method_name, float(width))
    request = ExplainRequest(
        method, target, baseline, baseline_echo, samples, seed, output, patch, labels, groups
    )
    _check_budget(request, instances, defaults, name)
    return request


def _baseline(value: Any, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    if _number(value):
        if not math.isfinite(value):
            raise BadParameter("baseline", f"{what}: expected a finite number, got {value!r}")
        arr = np.full(shape, value, dtype=np.float64)
    elif isinstance(value, list):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise BadParameter(
                "baseline",
                f"{what}: expected a number or nested lists of numbers shaped like one "
                f"instance {list(shape)}",
            ) from None
        if arr.shape != shape:
            raise BadParameter(
                "baseline",
                f"{what}: shape {list(arr.shape)} does not match one instance's {list(shape)}",
            )
        if not np.isfinite(arr).all():
            raise BadParameter("baseline", f"{what}: expected finite numbers")
    else:
        raise BadParameter(
            "baseline",
            f"{what}: expected a number or an array shaped like one instance {list(shape)}, "
            f"got {type(value).__name__}",
        )
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadParameter("baseline", f"{what}: out of range for the input's {dtype}")
    return arr.astype(dtype)


def _patch(
    value: Any,
    default: tuple[int, int] | None,
    shape: tuple[int, ...],
    what: str,
) -> tuple[int, int] | None:
    if value is None:
        if not is_image_like(shape):
            return None
        if default is None:
            return default_patch(shape)
        # the server's default fits any image: at most the whole image
        return min(default[0], shape[-2]), min(default[1], shape[-1])
    if not is_image_like(shape):
        raise BadParameter(
            "patch",
            f"{what}: applies to inputs whose instances have 2 or more axes longer than 1 "
            f"(images); this model's instances are shaped {list(shape)}",
        )
    if not isinstance(value, list) or len(value) != 2 or not all(_int(v) and v >= 1 for v in value):
        raise BadParameter(
            "patch", f"{what}: expected [height, width], two integers >= 1, got {value!r}"
        )
    h, w = shape[-2:]
    if value[0] > h or value[1] > w:
        raise BadParameter(
            "patch",
            f"{what}: {value} is larger than the instance's last two axes [{h}, {w}]",
        )
    return value[0], value[1]


def _check_budget(
    request: ExplainRequest, instances: int, defaults: Defaults, name: Callable[[str], str]
) -> None:
    d, method = request.groups, request.method
    if d == 0:
        raise BadParameter("instances", "an instance has no elements to explain")
    if method.name == Lime.name and request.samples < d + 1:
        raise BadParameter(
            "samples",
            f"{name('samples')}: LIME fits {d + 1} coefficients ({d} features or patches and "
            f"an intercept) and needs at least that many samples, got {request.samples}",
        )
    if (
        method.name == KernelShap.name
        and not exact_shap_fits(d, request.samples)
        and request.samples < d + 1
    ):
        raise BadParameter(
            "samples",
            f"{name('samples')}: sampled KernelSHAP over {d} features or patches needs at "
            f"least {d + 1} samples, got {request.samples}",
        )
    rows = request.rows() * instances
    if rows > defaults.max_samples:
        which = "patch" if method.name == "occlusion" else "samples"
        hint = (
            "; a larger patch makes fewer groups"
            if request.patch is not None
            else ("; fewer samples or fewer instances per request" if which == "samples" else "")
        )
        raise BadParameter(
            which,
            f"{name(which)}: {instances} instance(s) x {request.rows()} perturbed inputs "
            f"({method.name} over {d} features or patches) = {rows}, over the limit of "
            f"{defaults.max_samples} per request ({defaults.cap}){hint}",
        )
