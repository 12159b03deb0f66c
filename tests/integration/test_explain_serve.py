"""Explanations from a real `modelservice serve` on loopback: KServe V1 `:explain` with plain
HTTP, V2 `explain` in JSON, binary and through tritonclient's public request-body API, every
parameter's 400, the cap on samples, seeded repeats, metadata, metrics apart from
inference, the explain queue's 503 while inference keeps being answered, and --no-explain."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from tests import explain_models
from tests.integration.runtime_server import Served, metric, serve
from tests.waiting import wait_until

RNG = np.random.default_rng(3)
K, F = 3, 6
W = RNG.standard_normal((K, F))
B = RNG.standard_normal(K)


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return explain_models.linear(tmp_path_factory.mktemp("explain") / "linear.onnx", W, B)


@pytest.fixture(scope="module")
def server(linear_onnx: Path) -> Iterator[Served]:
    with serve(linear_onnx, "--explain-max-samples", "500") as served:
        yield served


def v1_explain(server: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/models/linear:explain", json=body, timeout=30)


def test_kserve_v1_explain_with_plain_http(server: Served) -> None:
    x = RNG.standard_normal((2, F))
    baseline = RNG.standard_normal(F)
    for method in ("occlusion", "shap"):
        r = v1_explain(
            server,
            {
                "instances": x.tolist(),
                "parameters": {"method": method, "target": 1, "baseline": baseline.tolist()},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"predictions", "explanations"}
        np.testing.assert_allclose(body["predictions"], x @ W.T + B, atol=1e-5)
        for i, e in enumerate(body["explanations"]):
            assert set(e) == {
                "method", "target", "baseline", "base_value", "attributions", "samples", "seed"
            }  # fmt: skip
            assert (e["method"], e["target"], e["seed"]) == (method, 1, None)
            assert e["baseline"] == baseline.tolist()
            np.testing.assert_allclose(e["attributions"], W[1] * (x[i] - baseline), atol=1e-5)
            np.testing.assert_allclose(e["base_value"], W[1] @ baseline + B[1], atol=1e-5)
            assert e["samples"] == (F if method == "occlusion" else 2**F - 2)
            # attributions + base value reproduce the prediction
            total = e["base_value"] + sum(e["attributions"])
            assert total == pytest.approx(body["predictions"][i][1], abs=1e-5)


def test_defaults_explain_the_predicted_class_with_shap(server: Served) -> None:
    x = RNG.standard_normal((1, F))
    e = v1_explain(server, {"instances": x.tolist()}).json()["explanations"][0]
    assert e["method"] == "shap" and e["baseline"] == 0
    assert e["target"] == int(np.argmax(x @ W.T + B))


def test_seeded_lime_repeats_over_http(server: Served) -> None:
    x = RNG.standard_normal((1, F)).tolist()
    params = {"method": "lime", "samples": 64, "seed": 9, "target": 0}
    first = v1_explain(server, {"instances": x, "parameters": params}).json()["explanations"]
    again = v1_explain(server, {"instances": x, "parameters": params}).json()["explanations"]
    other = v1_explain(server, {"instances": x, "parameters": {**params, "seed": 10}}).json()
    assert first == again and first[0]["seed"] == 9
    assert other["explanations"][0]["seed"] == 10
    np.testing.assert_allclose(first[0]["attributions"], W[0] * np.array(x[0]), atol=1e-5)


def v2_body(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    return {
        "id": "e-1",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ],
        "parameters": parameters,
    }


def test_v2_explain_json_and_binary(server: Served) -> None:
    x = RNG.standard_normal((2, F)).astype(np.float32)
    r = httpx.post(
        server.url + "/v2/models/linear/explain", json=v2_body(x, method="occlusion", target=2)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("linear", "1", "e-1")
    (out,) = body["outputs"]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), x @ W.T + B, atol=1e-5)
    for i, e in enumerate(body["explanations"]):
        np.testing.assert_allclose(e["attributions"], W[2] * x[i], atol=1e-5)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, F],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"method": "occlusion", "target": 2, "binary_data_output": True},
        }
    )
    r = httpx.post(
        server.url + "/v2/models/linear/versions/1/explain",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    assert r.json()["explanations"] == body["explanations"]


def test_tritonclient_request_body_to_the_explain_extension(server: Served) -> None:
    """tritonclient.http has no public call for a route of an extension: its transport
    (`InferenceServerClient._post`) is private. What it offers publicly is the V2 body with
    custom parameters (`generate_request_body(..., parameters=...)`) and the parsing of a
    response (`parse_response_body`): sent here with plain HTTP."""
    x = RNG.standard_normal((1, F)).astype(np.float32)
    inp = triton.InferInput("x", [1, F], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, hlen = triton.InferenceServerClient.generate_request_body(
        [inp], parameters={"method": "shap", "target": 0, "seed": 4}
    )
    headers = {} if hlen is None else {"Inference-Header-Content-Length": str(hlen)}
    r = httpx.post(server.url + "/v2/models/linear/explain", content=body, headers=headers)
    assert r.status_code == 200, r.text
    result = triton.InferenceServerClient.parse_response_body(r.content)
    np.testing.assert_allclose(result.as_numpy("y"), x @ W.T + B, atol=1e-5)
    (e,) = result.get_response()["explanations"]
    np.testing.assert_allclose(e["attributions"], W[0] * x[0], atol=1e-5)


def test_extension_in_server_and_model_metadata(server: Served) -> None:
    assert httpx.get(server.url + "/v2").json()["extensions"] == ["binary_tensor_data", "explain"]
    meta = httpx.get(server.url + "/v2/models/linear").json()
    assert meta["extensions"] == ["explain"]
    assert meta["explain"] == {
        "methods": ["shap", "lime", "occlusion"],
        "method": "shap",
        "samples": 500,  # held to the cap given on the command line
        "max_samples": 500,
        "patch": None,
    }


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"method": "anchors"}, "parameters.method: expected one of ['shap', 'lime', 'occlusion']"),
        ({"target": 7}, "parameters.target: 7 is out of range; output 'y' has 3 values"),
        ({"baseline": [1, 2]}, "parameters.baseline: shape [2] does not match one instance's [6]"),
        ({"samples": -1}, "parameters.samples: expected a positive integer, got -1"),
        ({"samples": 501}, "parameters.samples: 501 is over the limit of 500"),
        ({"method": "lime", "samples": 300}, "parameters.samples: 2 instance(s) x 300"),
        ({"seed": 1.5}, "parameters.seed: expected an integer"),
        ({"output": "logits"}, "parameters.output: expected one of the model's outputs ['y']"),
        ({"patch": [2, 2]}, "parameters.patch: applies to inputs whose instances have 2"),
        ({"colour": "red"}, "parameters.colour: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(server: Served, parameters: dict, message: str):
    x = RNG.standard_normal((2, F)).tolist()
    r = v1_explain(server, {"instances": x, "parameters": parameters})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(message)


def test_bad_instances_and_models(server: Served) -> None:
    r = v1_explain(server, {"instances": [[1.0, 2.0]]})
    assert r.status_code == 400 and "shape [1, 2] does not match" in r.json()["error"]
    r = v1_explain(server, {"instances": [[0.0] * F], "parameters": "shap"})
    assert r.status_code == 400
    assert r.json()["error"] == "parameters must be an object, got str"
    r = v1_explain(server, {"instances": [[None] * F]})  # null reads as NaN
    assert r.status_code == 400
    assert r.json()["error"].startswith("instances: the model's output 'y' is not finite")
    r = httpx.post(server.url + "/v1/models/nope:explain", json={"instances": [[0.0] * F]})
    assert r.status_code == 404 and "model 'nope' not found" in r.json()["error"]


def test_explain_metrics_are_apart_from_inference(server: Served) -> None:
    before = {
        n: metric(server.url, n)
        for n in (
            "nv_inference_count",
            "nv_inference_request_success",
            "modelservice_explain_request_success",
            "modelservice_explain_request_failure",
            "modelservice_explain_inference_count",
        )
    }
    x = RNG.standard_normal((1, F)).tolist()
    assert v1_explain(server, {"instances": x, "parameters": {"method": "occlusion"}}).is_success
    assert v1_explain(server, {"instances": x, "parameters": {"samples": 0}}).status_code == 400
    after = {n: metric(server.url, n) for n in before}
    assert after["nv_inference_count"] == before["nv_inference_count"]
    assert after["nv_inference_request_success"] == before["nv_inference_request_success"]
    assert (
        after["modelservice_explain_request_success"]
        == before["modelservice_explain_request_success"] + 1
    )
    assert (
        after["modelservice_explain_request_failure"]
        == before["modelservice_explain_request_failure"] + 1
    )
    # the instance and the baseline, then the F occluded rows
    assert (
        after["modelservice_explain_inference_count"]
        == before["modelservice_explain_inference_count"] + 2 + F
    )
    text = httpx.get(server.url + "/metrics").text
    assert "# TYPE modelservice_explain_request_duration_seconds histogram" in text
    assert 'modelservice_explain_pending_request_count{model="linear",version="1"} 0' in text


def test_no_explain_answers_404(linear_onnx: Path) -> None:
    with serve(linear_onnx, "--no-explain") as served:
        for path in ("/v1/models/linear:explain", "/v2/models/linear/explain"):
            r = httpx.post(served.url + path, json={"instances": [[0.0] * F]})
            assert r.status_code == 404
            assert r.json()["error"].startswith("explanations are turned off on this server")
        assert httpx.get(served.url + "/v2").json()["extensions"] == ["binary_tensor_data"]
        assert "explain" not in httpx.get(served.url + "/v2/models/linear").json()
        r = httpx.post(served.url + "/v1/models/linear:predict", json={"instances": [[0.0] * F]})
        assert r.status_code == 200


def test_a_full_explain_queue_is_503_and_inference_is_still_answered(tmp_path: Path) -> None:
    slow = explain_models.slow(tmp_path / "slow.onnx")
    with serve(slow, "--explain-max-queue", "0", "--explain-max-samples", "16384") as served:
        x = np.random.default_rng(0).standard_normal((1, 512)).tolist()
        long_one: dict[str, Any] = {}

        def explain() -> None:
            body = {"instances": x, "parameters": {"method": "lime", "samples": 16384}}
            long_one["r"] = httpx.post(
                served.url + "/v1/models/slow:explain", json=body, timeout=300
            )

        thread = threading.Thread(target=explain)
        thread.start()
        try:
            pending = "modelservice_explain_pending_request_count"
            wait_until(
                "the long explanation to start",
                lambda: metric(served.url, pending) == 1,
                interval=0.02,
            )
            # while it runs: inference is answered, a second explanation is refused
            for _ in range(10):
                r = httpx.post(served.url + "/v1/models/slow:predict", json={"instances": x})
                assert r.status_code == 200, r.text
            r = httpx.post(served.url + "/v1/models/slow:explain", json={"instances": x})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "the explain queue is full" in r.json()["error"]
            assert metric(served.url, pending) == 1, (
                "the long explanation ended before inference was tried: it is no check of "
                "starvation any more; make the slow model slower"
            )
        finally:
            thread.join(timeout=300)
        assert long_one["r"].status_code == 200, long_one["r"].text


def test_an_image_over_v2_grouped_by_patches(tmp_path: Path) -> None:
    image = (3, 8, 8)
    w = RNG.standard_normal((2, int(np.prod(image))))
    model = explain_models.image_linear(tmp_path / "img.onnx", w, image)
    with serve(model, "--explain-patch", "4,4") as served:
        x = RNG.standard_normal((1, *image)).astype(np.float32)
        body = v2_body(x, method="shap", target=1)
        r = httpx.post(served.url + "/v2/models/img/explain", json=body, timeout=30)
        assert r.status_code == 200, r.text
        (e,) = r.json()["explanations"]
        assert e["samples"] == 2**4 - 2 and e["seed"] is None  # 4 patches: exact
        got = np.array(e["attributions"])
        assert got.shape == image
        contrib = (w[1] * x[0].ravel().astype(np.float64)).reshape(image)
        for rows in (slice(0, 4), slice(4, 8)):
            for cols in (slice(0, 4), slice(4, 8)):
                patch = (slice(None), rows, cols)
                assert got[patch].sum() == pytest.approx(contrib[patch].sum(), abs=1e-4)
        meta = httpx.get(served.url + "/v2/models/img").json()
        assert meta["explain"]["patch"] == [4, 4]


def test_explanations_from_several_workers(linear_onnx: Path) -> None:
    with serve(linear_onnx, "--workers", "2") as served:
        x = RNG.standard_normal((1, F))
        for _ in range(4):  # connections go to whichever worker is least loaded
            r = httpx.post(
                served.url + "/v1/models/linear:explain",
                json={"instances": x.tolist(), "parameters": {"target": 0}},
            )
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(
                r.json()["explanations"][0]["attributions"], W[0] * x[0], atol=1e-5
            )
        # the workers' explain counters are summed in whichever worker answers /metrics
        assert metric(served.url, "modelservice_explain_request_success") == 4


def test_a_client_that_leaves_keeps_its_slot_until_its_explanation_ends(tmp_path: Path) -> None:
    slow = explain_models.slow(tmp_path / "slow.onnx")
    # Long enough to outlast its client's 1 s read timeout and the next request on a fast
    # machine too (16,384 samples took under 1 s on an AVX-512 one and the slot was free).
    samples = "65536"
    with serve(slow, "--explain-max-queue", "0", "--explain-max-samples", samples) as served:
        x = np.random.default_rng(1).standard_normal((1, 512)).tolist()
        url = served.url + "/v1/models/slow:explain"
        long_body = {"instances": x, "parameters": {"method": "lime", "samples": int(samples)}}
        pending = "modelservice_explain_pending_request_count"

        def leave_early() -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=long_body, timeout=httpx.Timeout(5, read=1.0))

        thread = threading.Thread(target=leave_early)
        thread.start()
        wait_until(
            "the long explanation to start",
            lambda: metric(served.url, pending) == 1,
            interval=0.02,
        )
        thread.join(timeout=30)
        # its client is gone; its explanation still runs in the explain thread, so the one
        # slot is still taken and the queue (0 waiting) still refuses
        r = httpx.post(url, json={"instances": x, "parameters": {"method": "occlusion"}})
        assert r.status_code == 503, r.text
        # ... until it ends: then the slot is free again
        short = {"instances": x, "parameters": {"method": "occlusion"}}
        wait_until(
            "the explain slot to be free again",
            lambda: httpx.post(url, json=short, timeout=60).status_code == 200,
            timeout=120,
            interval=0.02,
        )
