"""The methods: one interface, `plan` the perturbations, then `attribute` from the answers.

A plan is a set of masks over the d feature groups (True: the group keeps the instance's
values, False: it takes the baseline's). The explainer (explainer.py) runs the masked
inputs through the model and hands each method the model's value for the explained target
at every mask, at the instance itself (`full`) and at the baseline (`base`). A new method is
a new class here, with nothing to change in the endpoints.

- Occlusion (feature ablation): each group at the baseline in turn, d masks; attribution =
  f(x) - f(x with that group at the baseline). Exact for a linear model.
- KernelSHAP (Lundberg and Lee 2017): the weighted linear regression over coalitions whose
  solution is the Shapley values, with the efficiency constraint sum(phi) = f(x) - f(base)
  built in (the last coefficient is eliminated, as the shap package does). Exact when every
  coalition fits in the sample budget (2^d - 2 <= samples): then the answer *is* the Shapley
  values. Otherwise coalitions are drawn from the Shapley kernel's size distribution
  (size s with probability proportional to 1/(s (d - s)), members uniform), each with its
  complement, with the given seed; their weights are then equal.
- LIME (Ribeiro et al. 2016): masks with a uniformly drawn number of groups off, a weighted
  least-squares linear surrogate on the binary masks (with an intercept; the instance and the
  baseline are two of its points); weights exp(-D^2 / width^2), D = ||1 - z|| / sqrt(d) the
  normalised distance from the instance, width `kernel_width` (default 0.75, i.e. LIME's
  tabular default of 0.75 * sqrt(d) on the unnormalised distance). Attributions are the
  surrogate's coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

# 2^d - 2 coalitions are enumerated only up to this d, whatever the budget (2^30 masks
# would not fit in memory); the cap on samples keeps d far below it in practice.
MAX_EXACT_GROUPS = 24
DEFAULT_KERNEL_WIDTH = 0.75


@dataclass(frozen=True)
class Plan:
    masks: np.ndarray  # (m, d) bool: True = the group keeps the instance's values
    weights: np.ndarray | None  # (m,) regression weights, None: equal
    exact: bool  # the result is the method's exact value, no sampling involved
    random: bool  # the seed was used


class Method(Protocol):
    name: ClassVar[str]

    def plan(self, d: int, samples: int, rng: np.random.Generator) -> Plan: ...

    def attribute(self, plan: Plan, values: np.ndarray, full: float, base: float) -> np.ndarray:
        """(d,) attributions from the model's `values` at each mask, at x and at the baseline."""
        ...

    def rows(self, d: int, samples: int) -> int:
        """How many masks `plan` makes (for the cap on samples, before any work)."""
        ...


class Occlusion:
    name: ClassVar[str] = "occlusion"

    def rows(self, d: int, samples: int) -> int:
        return d

    def plan(self, d: int, samples: int, rng: np.random.Generator) -> Plan:
        return Plan(~np.eye(d, dtype=bool), None, exact=True, random=False)

    def attribute(self, plan: Plan, values: np.ndarray, full: float, base: float) -> np.ndarray:
        return full - values


def exact_shap_fits(d: int, samples: int) -> bool:
    return d <= MAX_EXACT_GROUPS and 2**d - 2 <= samples


def shapley_kernel(d: int, sizes: np.ndarray) -> np.ndarray:
    """The Shapley kernel weight of one coalition of each size (0 < s < d)."""
    comb = np.array([math.comb(d, int(s)) for s in sizes], dtype=np.float64)
    return (d - 1) / (comb * sizes * (d - sizes))


class KernelShap:
    name: ClassVar[str] = "shap"

    def rows(self, d: int, samples: int) -> int:
        return 2**d - 2 if exact_shap_fits(d, samples) else samples

    def plan(self, d: int, samples: int, rng: np.random.Generator) -> Plan:
        if exact_shap_fits(d, samples):
            codes = np.arange(1, 2**d - 1, dtype=np.int64)
            masks = ((codes[:, None] >> np.arange(d)) & 1).astype(bool)
            weights = shapley_kernel(d, masks.sum(axis=1)) if d > 1 else None
            return Plan(masks, weights, exact=True, random=False)
        sizes = np.arange(1, d)
        p = 1.0 / (sizes * (d - sizes))
        draws = (samples + 1) // 2
        size = rng.choice(sizes, size=draws, p=p / p.sum())
        rank = rng.random((draws, d)).argsort(axis=1).argsort(axis=1)
        half = rank < size[:, None]
        masks = np.concatenate([half, ~half])[:samples]  # each coalition with its complement
        return Plan(masks, None, exact=False, random=True)

    def attribute(self, plan: Plan, values: np.ndarray, full: float, base: float) -> np.ndarray:
        d = plan.masks.shape[1]
        total = full - base
        if d == 1:
            return np.array([total])
        z = plan.masks.astype(np.float64)
        # sum(phi) = total: phi_last = total - sum(phi_rest), so
        # values - base - z_last * total = (z_rest - z_last) . phi_rest
        a = z[:, :-1] - z[:, -1:]
        b = values - base - z[:, -1] * total
        if plan.weights is not None:
            sw = np.sqrt(plan.weights)
            a, b = a * sw[:, None], b * sw
        rest = np.linalg.lstsq(a, b, rcond=None)[0]
        return np.append(rest, total - rest.sum())


class Lime:
    name: ClassVar[str] = "lime"

    def __init__(self, kernel_width: float = DEFAULT_KERNEL_WIDTH) -> None:
        self.kernel_width = kernel_width

    def rows(self, d: int, samples: int) -> int:
        return samples

    def plan(self, d: int, samples: int, rng: np.random.Generator) -> Plan:
        off = rng.integers(1, d + 1, size=samples)  # how many groups at the baseline
        rank = rng.random((samples, d)).argsort(axis=1).argsort(axis=1)
        masks = rank >= off[:, None]
        return Plan(masks, self.kernel(masks), exact=False, random=True)

    def kernel(self, masks: np.ndarray) -> np.ndarray:
        d = masks.shape[1]
        distance2 = (~masks).sum(axis=1) / d  # ||1 - z||^2 / d
        return np.exp(-distance2 / self.kernel_width**2)

    def attribute(self, plan: Plan, values: np.ndarray, full: float, base: float) -> np.ndarray:
        d = plan.masks.shape[1]
        ends = np.array([np.ones(d, bool), np.zeros(d, bool)])  # the instance, the baseline
        masks = np.concatenate([plan.masks, ends])
        y = np.concatenate([values, [full, base]])
        sw = np.sqrt(self.kernel(masks))
        design = np.hstack([np.ones((len(masks), 1)), masks.astype(np.float64)])
        coef = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)[0]
        return coef[1:]


METHODS: tuple[str, ...] = (KernelShap.name, Lime.name, Occlusion.name)


def make_method(name: str, kernel_width: float = DEFAULT_KERNEL_WIDTH) -> Method:
    if name == Occlusion.name:
        return Occlusion()
    if name == KernelShap.name:
        return KernelShap()
    if name == Lime.name:
        return Lime(kernel_width)
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
