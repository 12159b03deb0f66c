"""The explanation methods in-process, on real onnxruntime sessions of models built with
onnx.helper: the linear ground truth W[target, i] * (x_i - baseline_i), the shap package's
KernelExplainer on a nonlinear model, seeded sampling, patches, and every parameter's 400."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from modelservice_runtime.explain.explainer import explain_batch
from modelservice_runtime.explain.methods import KernelShap
from modelservice_runtime.explain.params import BadParameter, Defaults, parse_parameters

from tests import explain_models

RNG = np.random.default_rng(7)
K, F = 3, 6
W = RNG.standard_normal((K, F))
B = RNG.standard_normal(K)


def runner(path: Path) -> Any:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    return lambda rows: dict(zip(outputs, session.run(None, {name: rows}), strict=True))


def request(shape: tuple[int, ...], n: int = 1, defaults: Defaults | None = None, **params: Any):
    return parse_parameters(
        params,
        defaults=defaults or Defaults(),
        instance_shape=shape,
        dtype=np.dtype(np.float32),
        outputs=["y"],
        instances=n,
    )


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return runner(explain_models.linear(tmp_path_factory.mktemp("m") / "linear.onnx", W, B))


def _x(n: int = 1, f: int = F) -> np.ndarray:
    return RNG.standard_normal((n, f)).astype(np.float32)


@pytest.mark.parametrize("method", ["occlusion", "shap"])
@pytest.mark.parametrize("target", [0, 2])
def test_linear_attributions_are_weight_times_difference(linear: Any, method: str, target: int):
    x = _x(2)
    baseline = RNG.standard_normal(F).astype(np.float32)
    req = request((F,), 2, method=method, target=target, baseline=baseline.tolist())
    result = explain_batch(linear, x, req)
    for i, e in enumerate(result.explanations):
        want = W[target] * (x[i].astype(np.float64) - baseline)
        np.testing.assert_allclose(e.attributions, want, atol=1e-5)
        assert e.target == target
        np.testing.assert_allclose(e.base_value, W[target] @ baseline + B[target], atol=1e-5)
    np.testing.assert_allclose(result.outputs["y"], x @ W.T + B, atol=1e-5)


def test_shap_is_exact_for_few_features_and_sampled_above(linear: Any) -> None:
    exact = explain_batch(linear, _x(), request((F,), samples=62)).explanations[0]
    assert (exact.samples, exact.seed) == (2**F - 2, None)  # every coalition, no randomness
    sampled = explain_batch(linear, _x(), request((F,), samples=61, seed=3)).explanations[0]
    assert (sampled.samples, sampled.seed) == (61, 3)


def test_sampled_shap_is_exact_on_a_linear_model_too(tmp_path: Path) -> None:
    f = 40  # 2^40 coalitions: sampled
    w = RNG.standard_normal((2, f))
    run = runner(explain_models.linear(tmp_path / "wide.onnx", w, np.zeros(2)))
    x = _x(1, f)
    e = explain_batch(run, x, request((f,), samples=300, target=1)).explanations[0]
    assert e.samples == 300 and e.seed == 0
    np.testing.assert_allclose(e.attributions, w[1] * x[0], atol=1e-5)


def test_lime_surrogate_recovers_the_weights(linear: Any) -> None:
    x = _x()
    baseline = (x[0] - 1.0).tolist()  # x - baseline = 1: coefficients are the weights
    req = request((F,), method="lime", target=1, baseline=baseline, samples=200, seed=5)
    e = explain_batch(linear, x, req).explanations[0]
    np.testing.assert_allclose(e.attributions, W[1], atol=1e-5)
    assert e.method == "lime" and e.seed == 5 and e.samples == 200


def test_target_predicted_is_the_argmax(linear: Any) -> None:
    x = _x(4)
    result = explain_batch(linear, x, request((F,), method="occlusion"))
    assert [e.target for e in result.explanations] == list(np.argmax(x @ W.T + B, axis=1))


def _shapley(f: Any, x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Shapley values by their definition: every subset, every feature."""
    d = len(x)
    phi = np.zeros(d)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            for s in itertools.combinations(others, size):
                z = base.copy()
                z[list(s)] = x[list(s)]
                without = f(z)
                z[i] = x[i]
                weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
                phi[i] += weight * (f(z) - without)
    return phi


@pytest.fixture(scope="module")
def nonlinear(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(11)
    path = explain_models.tanh_mlp(
        tmp_path_factory.mktemp("m") / "tanh.onnx",
        rng.standard_normal((F, 8)),
        rng.standard_normal(8),
        rng.standard_normal((8, 2)),
        rng.standard_normal(2),
    )
    return runner(path)


def test_kernel_shap_matches_shap_package_and_definition(nonlinear: Any) -> None:
    import shap  # the dev extra's reference; a missing one is a failure, not a skip

    x = RNG.standard_normal((2, F)).astype(np.float32)
    baseline = RNG.standard_normal(F).astype(np.float32)
    req = request((F,), 2, target=1, baseline=baseline.tolist())
    result = explain_batch(nonlinear, x, req)

    def f1(rows: np.ndarray) -> np.ndarray:
        return nonlinear(np.asarray(rows, np.float32))["y"][:, 1].astype(np.float64)

    reference = shap.KernelExplainer(f1, baseline[None, :].astype(np.float64))
    theirs = reference.shap_values(x.astype(np.float64), nsamples=2**F, silent=True)
    for i, e in enumerate(result.explanations):
        assert e.samples == 2**F - 2
        np.testing.assert_allclose(e.attributions, theirs[i], atol=1e-5)
        np.testing.assert_allclose(
            e.attributions, _shapley(lambda z: f1(z[None])[0], x[i], baseline), atol=1e-5
        )
        # efficiency: the attributions and the base value add up to the prediction
        assert e.base_value + e.attributions.sum() == pytest.approx(e.prediction, abs=1e-5)
        assert e.prediction == pytest.approx(float(result.outputs["y"][i, 1]), abs=1e-6)


def test_sampled_shap_repeats_with_its_seed_and_approaches_the_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    f = 12
    run = runner(
        explain_models.tanh_mlp(
            tmp_path / "t12.onnx",
            rng.standard_normal((f, 16)) / 2,
            rng.standard_normal(16),
            rng.standard_normal((16, 2)),
            rng.standard_normal(2),
        )
    )
    x = rng.standard_normal((1, f)).astype(np.float32)
    d = Defaults(max_samples=2**f)

    def phi(**p: Any) -> np.ndarray:
        return explain_batch(run, x, request((f,), defaults=d, target=0, **p)).explanations[0]

    a, b, c = phi(samples=2000, seed=1), phi(samples=2000, seed=1), phi(samples=2000, seed=2)
    np.testing.assert_array_equal(a.attributions, b.attributions)
    assert not np.array_equal(a.attributions, c.attributions)
    exact = phi(samples=2**f - 2)
    assert exact.seed is None
    scale = np.abs(exact.attributions).max()
    assert np.abs(a.attributions - exact.attributions).max() < 0.1 * scale
    for e in (a, c, exact):  # sampled or not, efficiency holds
        assert e.base_value + e.attributions.sum() == pytest.approx(e.prediction, abs=1e-5)


def test_image_patches_group_pixels_across_channels(tmp_path: Path) -> None:
    image = (3, 8, 8)
    w = RNG.standard_normal((2, math.prod(image)))
    run = runner(explain_models.image_linear(tmp_path / "img.onnx", w, image))
    x = RNG.standard_normal((1, *image)).astype(np.float32)
    for method in ("occlusion", "shap"):
        req = request(image, method=method, target=0, patch=[4, 4], samples=14)
        assert req.groups == 4  # 2 x 2 patches
        e = explain_batch(run, x, req).explanations[0]
        assert e.attributions.shape == image and e.seed is None  # 2^4 - 2 = 14: exact
        contrib = (w[0] * x[0].ravel()).reshape(image)
        for r, c in itertools.product(range(2), range(2)):
            patch = (slice(None), slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
            got = e.attributions[patch]
            np.testing.assert_allclose(got.sum(), contrib[patch].sum(), atol=1e-4)
            np.testing.assert_allclose(got, got.flat[0])  # an equal share per element
    default = request(image)
    assert default.patch == (1, 1) and default.groups == 64  # an 8x8 grid


@pytest.mark.parametrize(
    ("params", "parameter", "says"),
    [
        ({"method": "gradients"}, "method", "expected one of ['shap', 'lime', 'occlusion']"),
        ({"target": -1}, "target", "an output index"),
        ({"target": "most"}, "target", "'predicted'"),
        ({"target": True}, "target", "an output index"),
        ({"baseline": "zero"}, "baseline", "expected a number or an array"),
        ({"baseline": [0.0, 1.0]}, "baseline", "shape [2] does not match one instance's [6]"),
        ({"baseline": float("nan")}, "baseline", "finite"),
        ({"samples": 0}, "samples", "a positive integer"),
        ({"samples": 2.5}, "samples", "a positive integer"),
        ({"samples": 20000}, "samples", "over the limit of 16384"),
        ({"seed": -3}, "seed", "0..2^63-1"),
        ({"seed": "x"}, "seed", "0..2^63-1"),
        ({"output": "z"}, "output", "the model's outputs ['y']"),
        ({"patch": [2, 2]}, "patch", "2 or more axes"),
        ({"method": "lime", "samples": 4}, "samples", "at least that many"),
        ({"kernel_width": 2.0}, "kernel_width", "method 'lime' only"),
        ({"method": "lime", "kernel_width": 0}, "kernel_width", "a number > 0"),
        ({"gradient": 1}, "gradient", "unknown parameter"),
    ],
)
def test_every_bad_parameter_is_named(params: dict[str, Any], parameter: str, says: str):
    with pytest.raises(BadParameter) as caught:
        request((F,), **params)
    assert caught.value.parameter == parameter
    assert caught.value.message.startswith(f"parameters.{parameter}: ")
    assert says in caught.value.message


def test_the_cap_counts_every_instance_and_occlusion_rows() -> None:
    small = Defaults(samples=100, max_samples=250)
    request((F,), 2, defaults=small)  # 2 x 62 exact coalitions: within
    with pytest.raises(BadParameter, match=r"3 instance\(s\) x 100 perturbed inputs"):
        request((F,), 3, defaults=small, samples=100, method="lime")
    with pytest.raises(BadParameter, match="over the limit of 250") as caught:
        request((3, 32, 32), 1, defaults=small, method="occlusion", patch=[1, 1])
    assert caught.value.parameter == "patch"
    image = parse_parameters(
        {"patch": [4, 4]},
        defaults=Defaults(patch=(16, 16)),
        instance_shape=(3, 8, 8),
        dtype=np.dtype(np.float32),
        outputs=["y"],
        instances=1,
    )
    assert image.patch == (4, 4)
    fitted = request((3, 8, 8), defaults=Defaults(patch=(16, 16)))
    assert fitted.patch == (8, 8) and fitted.groups == 1  # the server default fits the image


def test_target_out_of_range_is_a_bad_parameter(linear: Any) -> None:
    with pytest.raises(BadParameter, match=r"target: 3 is out of range; output 'y' has 3"):
        explain_batch(linear, _x(), request((F,), target=3))


def test_kernel_shap_plan_pairs_each_coalition_with_its_complement() -> None:
    plan = KernelShap().plan(30, 100, np.random.default_rng(0))
    assert plan.masks.shape == (100, 30) and not plan.exact
    np.testing.assert_array_equal(plan.masks[:50], ~plan.masks[50:])
    sizes = plan.masks.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 29  # never the empty or the full coalition


def test_a_model_without_a_batch_axis_runs_row_by_row(tmp_path: Path) -> None:
    from modelservice_runtime.serving.explaining import model_runner
    from modelservice_runtime.serving.model import OnnxModel
    from modelservice_runtime.settings import Settings

    path = explain_models.linear(tmp_path / "fixed.onnx", W, B, batch=1)
    model = OnnxModel(Settings(model_path=path, execution_provider="cpu"))
    assert not model.batchable
    x = _x()  # the whole input tensor [1, F] is the one instance
    req = request((1, F), method="shap", target=2)
    assert req.groups == F and req.patch is None  # [1, F] is tabular
    result = explain_batch(model_runner(model), x[None], req)
    (e,) = result.explanations
    assert e.attributions.shape == (1, F)
    np.testing.assert_allclose(e.attributions[0], W[2] * x[0], atol=1e-5)
    np.testing.assert_allclose(result.outputs["y"][0], x @ W.T + B, atol=1e-5)
