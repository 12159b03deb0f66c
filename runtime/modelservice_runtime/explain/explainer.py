"""One explain request: predictions, then each instance's perturbations in chunks.

`run(rows)` is the model: rows stacked on a new first axis -> every output, rows first.
Each call is one batched `session.run` (or, for a model without a batch axis, the caller's
loop over rows); this module decides only which rows go in and how many at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelservice_runtime.explain.params import BadParameter, ExplainRequest

Run = Callable[[np.ndarray], dict[str, np.ndarray]]
Pace = Callable[[float], None]  # called after each perturbation run with its seconds
# Rows per model run for perturbations: large enough for batching to pay, small enough
# that one run never holds the model (or the memory of an image batch) for long.
CHUNK_ROWS = 64


@dataclass(frozen=True)
class Explanation:
    method: str
    target: int
    base_value: float  # the explained output's value at the baseline
    prediction: float  # ... and at the instance
    attributions: np.ndarray  # shaped like the instance, float64
    samples: int  # perturbed inputs the model ran (the instance and baseline aside)
    seed: int | None  # None: no randomness was involved
    exact: bool

    def to_json(self, baseline: Any) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "baseline": baseline,
            "base_value": self.base_value,
            "attributions": self.attributions.tolist(),
            "samples": self.samples,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class BatchExplanation:
    outputs: dict[str, np.ndarray]  # the model's outputs for the instances (predictions)
    explanations: list[Explanation]
    rows: int  # rows the model ran for this request, all of them
    runs: int  # model runs (batches)


def perturbed(
    x: np.ndarray, baseline: np.ndarray, labels: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """Rows (m, *instance): each element from x where its group's mask is True, else from
    the baseline."""
    return np.where(masks[:, labels], x, baseline).astype(x.dtype, copy=False)


def _flat(output: np.ndarray, rows: int) -> np.ndarray:
    return output.reshape(rows, -1).astype(np.float64)


def _finite(values: np.ndarray, output: str, where: str) -> None:
    """A fit over NaN or infinity fails (or means nothing): refuse it as bad input."""
    if not np.isfinite(values).all():
        raise BadParameter(
            "instances",
            f"instances: the model's output {output!r} is not finite for {where} (NaN or "
            "infinity in the input?); explanations need finite outputs",
        )


def explain_batch(
    run: Run,
    instances: np.ndarray,
    request: ExplainRequest,
    chunk_rows: int = CHUNK_ROWS,
    pace: Pace | None = None,
) -> BatchExplanation:
    """Predictions for `instances` (n, *instance) and one explanation each. `pace`, if
    given, runs between perturbation runs (the runtime yields to inference there)."""
    n = len(instances)
    first = run(np.concatenate([instances, request.baseline[None]]))
    runs, rows = 1, n + 1
    outputs = {name: out[:n] for name, out in first.items()}
    explained = _flat(first[request.output], n + 1)
    _finite(explained, request.output, "the instances or the baseline")
    width = explained.shape[1]
    base_row = explained[n]
    explanations = []
    for i in range(n):
        target = request.target
        if target is None:
            target = int(np.argmax(explained[i]))
        elif target >= width:
            raise BadParameter(
                "target",
                f"parameters.target: {target} is out of range; output "
                f"{request.output!r} has {width} values per instance (0..{width - 1})",
            )
        method = request.method
        rng = np.random.default_rng(request.seed)
        plan = method.plan(request.groups, request.samples, rng)
        values = np.empty(len(plan.masks), dtype=np.float64)
        started = time.perf_counter()
        for start in range(0, len(plan.masks), chunk_rows):
            masks = plan.masks[start : start + chunk_rows]
            batch = perturbed(instances[i], request.baseline, request.labels, masks)
            out = run(batch)[request.output]
            values[start : start + len(masks)] = _flat(out, len(masks))[:, target]
            runs += 1
            rows += len(masks)
            if pace is not None:
                pace(time.perf_counter() - started)
            started = time.perf_counter()
        _finite(values, request.output, f"the perturbations of instance {i}")
        full, base = float(explained[i, target]), float(base_row[target])
        phi = method.attribute(plan, values, full, base)
        # Each element carries an equal share of its group's attribution: the sum over the
        # instance stays the group's total (SHAP's efficiency), and a heat map shows density.
        counts = np.bincount(request.labels.ravel(), minlength=request.groups)
        per_element = (phi / counts)[request.labels]
        explanations.append(
            Explanation(
                method.name,
                target,
                base,
                full,
                per_element,
                len(plan.masks),
                request.seed if plan.random else None,
                plan.exact,
            )
        )
    return BatchExplanation(outputs, explanations, rows, runs)
