"""The pure parts of the kind e2e test (tests/e2e/test_kind.py), which cannot run on machines
without a Docker engine: the request it sends and the answer it expects, against the same
CNN served in-process by the real runtime (TestClient over create_app)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.e2e.test_kind import EXAMPLE, example_input, expected_output, v2_request
from tests.waiting import wait_until


def test_example_input_is_not_constant_and_fills_a_dynamic_batch() -> None:
    x = example_input([-1, 3, 64, 64])
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32
    assert float(x.std()) > 0.1
    assert np.array_equal(x, example_input([-1, 3, 64, 64])), "seeded: the same every run"


def test_v2_request_names_the_first_input_with_its_shape_and_data() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = v2_request([{"name": "input", "datatype": "FP32", "shape": [-1, 3]}], x)
    assert body == {
        "inputs": [
            {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [0, 1, 2, 3, 4, 5]}
        ]
    }


def test_the_expected_answer_is_what_the_runtime_answers_for_the_example(
    cnn_onnx: Path,
) -> None:
    """The example's normalization applied by the runtime (serve --normalize-*) and by
    expected_output agree; without it they do not (so the check can fail)."""
    from fastapi.testclient import TestClient
    from modelservice_runtime.serving.app import create_app
    from modelservice_runtime.settings import Settings

    normalize = yaml.safe_load(EXAMPLE.read_text())["spec"]["runtime"]["normalize"]
    settings = Settings(
        model_path=cnn_onnx,
        name="resnet",
        normalize_mean=normalize["mean"],
        normalize_std=normalize["std"],
    )
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until(
            "the CNN to be ready",
            lambda: client.get("/v2/health/ready").status_code == 200,
            timeout=60,
            interval=0.02,
        )
        assert app.state.dataplane.load_error is None, app.state.dataplane.load_error
        meta = client.get("/v2/models/resnet").json()
        x = example_input(meta["inputs"][0]["shape"])
        reply = client.post("/v2/models/resnet/infer", json=v2_request(meta["inputs"], x))
    assert reply.status_code == 200, reply.text
    (out,) = reply.json()["outputs"]
    want = expected_output(cnn_onnx, x, normalize)
    assert out["shape"] == list(want.shape) == [2, 10]
    got = np.asarray(out["data"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got, expected_output(cnn_onnx, x, None), rtol=1e-4, atol=1e-5)
