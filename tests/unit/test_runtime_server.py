"""The FastAPI app in-process (TestClient): every endpoint, exact status codes and error
bodies for bad input, auth, limits, metrics. Real onnxruntime on models exported by torch."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient
from modelservice_runtime.serving.app import create_app
from modelservice_runtime.settings import Settings

from tests.waiting import wait_until

TOKEN = "s3cret-token-value"


@contextmanager
def serving(**settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(**settings))
    with TestClient(app) as client:
        # A load error ends the wait too: some tests are about it.
        wait_until(
            "ready, or a load error",
            lambda: (
                app.state.dataplane.load_error or client.get("/v2/health/ready").status_code == 200
            ),
            timeout=30,
            interval=0.02,
        )
        yield client


@pytest.fixture(scope="module")
def client(mlp_onnx: Path) -> Iterator[TestClient]:
    with serving(model_path=mlp_onnx) as c:
        yield c


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def v2_body(x: np.ndarray, **tensor: Any) -> dict[str, Any]:
    t = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    t.update(tensor)
    return {"inputs": [t]}


def test_health_metadata_and_config(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "explain"]
    meta = client.get("/v2/models/mlp").json()
    assert meta == client.get("/v2/models/mlp/versions/1").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert client.get("/v2/models/mlp/config").json()["max_batch_size"] == 32
    assert client.get("/v1/models").json() == {"models": ["mlp"]}
    assert client.get("/v1/models/mlp").json() == {"name": "mlp", "ready": True}


def test_not_found_bodies(client: TestClient) -> None:
    r = client.get("/v2/models/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "model 'nope' not found; this server serves ['mlp']"}
    r = client.post("/v2/models/nope/infer", json=v2_body(np.zeros((1, 64), np.float32)))
    assert r.status_code == 404 and "model 'nope' not found" in r.json()["error"]
    r = client.get("/v2/models/mlp/versions/7")
    assert r.status_code == 404
    assert r.json() == {"error": "model 'mlp' has no version '7'; available versions: ['1']"}
    r = client.post("/v1/models/nope:predict", json={"instances": [[0.0] * 64]})
    assert r.status_code == 404
    r = client.get("/v3/nothing")
    assert r.status_code == 404 and r.json() == {
        "error": "no endpoint GET /v3/nothing; see /docs for the API"
    }
    assert client.delete("/v2/models/mlp/infer").status_code == 405


def test_v2_json_and_binary_match_in_process_onnxruntime(client: TestClient, mlp_onnx: Path):
    x = np.random.default_rng(0).standard_normal((3, 64), dtype=np.float32)
    want = reference(mlp_onnx, x)
    r = client.post("/v2/models/mlp/infer", json={**v2_body(x), "id": "abc"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "abc" and out["model_name"] == "mlp" and out["model_version"] == "1"
    (tensor,) = out["outputs"]
    assert tensor["shape"] == [3, 10] and tensor["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(tensor["data"], np.float32).reshape(3, 10), want)

    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [3, 64],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    )
    r = client.post(
        "/v2/models/mlp/versions/1/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    hlen = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:hlen])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": want.nbytes}
    np.testing.assert_array_equal(np.frombuffer(r.content[hlen:], np.float32).reshape(3, 10), want)


def test_v1_and_predict(client: TestClient, mlp_onnx: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 64), dtype=np.float32)
    want = reference(mlp_onnx, x)
    for path in ("/v1/models/mlp:predict", "/predict"):
        r = client.post(path, json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["predictions"], np.float32), want, rtol=1e-6)
    r = client.post(
        "/predict",
        content=gzip.compress(orjson.dumps({"instances": x.tolist()})),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"], np.float32), want, rtol=1e-6)
    r = client.post("/predict", json=v2_body(x))
    assert r.status_code == 200
    np.testing.assert_array_equal(
        np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10), want
    )
    # V1 may name its rows `inputs` too: without a datatype per input it stays V1.
    for v1_inputs in (x.tolist(), {"input": x.tolist()}):
        r = client.post("/predict", json={"inputs": v1_inputs})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["predictions"], np.float32), want, rtol=1e-6)
    r = client.post("/predict", content=b'{"instances": [[1, 2]')
    assert r.status_code == 400
    assert r.json()["error"].startswith("request body is not valid JSON")


ROW = [0.0] * 64


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": ROW}]},
            "unknown input 'x'; the model takes inputs ['input']",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 64], "data": ROW}]},
            "input 'input': datatype FP64 does not match; the model expects FP32",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 32], "data": ROW}]},
            "input 'input': shape [2, 32] does not match the model's [-1, 64] (-1 = any size)",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [64], "data": ROW}]},
            "input 'input': shape [64] does not match the model's [-1, 64] (-1 = any size)",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64], "data": ROW}]},
            "input 'input': data has 64 elements but shape [2, 64] needs 128",
        ),
        (
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}],
                "outputs": [{"name": "logits"}],
            },
            "unknown output 'logits'; the model has outputs ['output']",
        ),
    ],
)
def test_bad_input_is_400_naming_what_was_expected(
    client: TestClient, body: dict[str, Any], error: str
) -> None:
    r = client.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 400
    assert r.json() == {"error": error}


def test_malformed_and_truncated_bodies_are_400(client: TestClient) -> None:
    r = client.post("/v2/models/mlp/infer", content=b'{"inputs": [')
    assert r.status_code == 400 and r.json()["error"].startswith("request body is not valid JSON")
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    )
    r = client.post(
        "/v2/models/mlp/infer",
        content=header + b"\0" * 100,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": "input 'input': binary_data_size is 256 bytes but only 100 bytes of binary "
        "data remain in the body (truncated payload?)"
    }
    r = client.post("/v1/models/mlp:predict", json={"instances": [[1.0] * 3]})
    assert r.status_code == 400
    assert "shape [1, 3] does not match the model's [-1, 64]" in r.json()["error"]
    # The server keeps serving after all of that.
    ok = client.post("/v2/models/mlp/infer", json=v2_body(np.zeros((1, 64), np.float32)))
    assert ok.status_code == 200


def test_body_over_limit_is_413_by_header_and_while_reading(mlp_onnx: Path) -> None:
    with serving(model_path=mlp_onnx, max_request_bytes=1000) as c:
        big = orjson.dumps(v2_body(np.zeros((10, 64), np.float32)))
        r = c.post("/v2/models/mlp/infer", content=big)
        assert r.status_code == 413
        assert r.json() == {
            "error": f"request body is {len(big)} bytes; the limit is 1000 bytes "
            "(--max-request-bytes)"
        }

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            for i in range(0, len(big), 300):
                yield big[i : i + 300]

        r = c.post("/v2/models/mlp/infer", content=chunks())
        assert r.status_code == 413
        assert "over the limit of 1000 bytes" in r.json()["error"]
        bomb = gzip.compress(b" " * 5000)  # small on the wire, over the limit inflated
        r = c.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        assert r.json() == {
            "error": "decompressed request body is over the limit of 1000 bytes "
            "(--max-request-bytes)"
        }
        r = c.post("/v2/models/mlp/infer", content=b"xx", headers={"Content-Encoding": "br"})
        assert r.status_code == 400
        assert r.json() == {
            "error": "Content-Encoding 'br' is not supported; expected gzip, deflate or identity"
        }
        small = v2_body(np.zeros((1, 8), np.float32))
        assert c.post("/v2/models/mlp/infer", json=small).status_code == 400


def test_bearer_auth(mlp_onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = v2_body(np.zeros((1, 64), np.float32))
    with serving(model_path=mlp_onnx, auth_token=TOKEN) as c:
        r = c.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": "missing Authorization header; expected 'Bearer <token>'"}
        r = c.post("/v2/models/mlp/infer", json=body, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        assert r.json() == {"error": "invalid bearer token in the Authorization header"}
        for path in ("/v2", "/v2/models/mlp", "/v1/models"):
            assert c.get(path).status_code == 401
        assert c.post("/predict", json={"instances": [ROW]}).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/v2/models/mlp/infer", json=body, headers=good).status_code == 200
        assert c.post("/predict", json={"instances": [ROW]}, headers=good).status_code == 200
        for open_path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            assert c.get(open_path).status_code == 200
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(Settings(model_path=mlp_onnx, auth_token=TOKEN))


def test_metrics_count_requests(client: TestClient) -> None:
    def value(text: str, name: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    before = client.get("/metrics").text
    client.post("/v2/models/mlp/infer", json=v2_body(np.zeros((4, 64), np.float32)))
    client.post("/v2/models/mlp/infer", content=b"{")
    after = client.get("/metrics").text
    assert (
        value(after, "nv_inference_request_success")
        == value(before, "nv_inference_request_success") + 1
    )
    assert (
        value(after, "nv_inference_request_failure")
        == value(before, "nv_inference_request_failure") + 1
    )
    assert value(after, "nv_inference_count") >= value(before, "nv_inference_count") + 4
    for name in (
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
        "modelservice_batch_size_bucket",
        "modelservice_request_duration_seconds_bucket",
    ):
        assert any(
            line.startswith(name + "{") and 'model="mlp",version="1"' in line
            for line in after.splitlines()
        ), name


def test_a_model_that_cannot_load_is_live_but_never_ready(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not onnx")
    with serving(model_path=bad) as c:
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert r.status_code == 503
        assert r.json()["error"].startswith("the model failed to load: cannot load")
        assert c.get("/v2/models/bad").status_code == 404


def test_normalization_is_applied_per_channel(cnn_onnx: Path) -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
    m = np.array(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.array(std, np.float32).reshape(1, 3, 1, 1)
    want = reference(cnn_onnx, (x - m) / s)
    with serving(model_path=cnn_onnx, normalize_mean=mean, normalize_std=std) as c:
        r = c.post("/v2/models/cnn/infer", json=v2_body(x))
        assert r.status_code == 200, r.text
        got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def mixed_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identity over a string, an int64 and a bool input: BYTES and non-float datatypes."""
    import onnx
    from onnx import TensorProto, helper

    specs = [
        ("s", TensorProto.STRING, ["batch"]),
        ("i", TensorProto.INT64, ["batch", 2]),
        ("b", TensorProto.BOOL, ["batch"]),
    ]
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n, _, _ in specs],
        "mixed",
        [helper.make_tensor_value_info(n, t, shape) for n, t, shape in specs],
        [helper.make_tensor_value_info(f"{n}_out", t, shape) for n, t, shape in specs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    onnx.save(model, path)
    return path


def test_bytes_int_and_bool_inputs_json_binary_and_v1(mixed_onnx: Path) -> None:
    with serving(model_path=mixed_onnx) as c:
        meta = c.get("/v2/models/mixed").json()
        assert [t["datatype"] for t in meta["inputs"]] == ["BYTES", "INT64", "BOOL"]
        body = {
            "inputs": [
                {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]},
                {"name": "i", "datatype": "INT64", "shape": [2, 2], "data": [1, -2, 3, 2**40]},
                {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            ]
        }
        r = c.post("/v2/models/mixed/infer", json=body)
        assert r.status_code == 200, r.text
        out = {t["name"]: t for t in r.json()["outputs"]}
        assert out["s_out"]["data"] == ["héllo", ""] and out["s_out"]["datatype"] == "BYTES"
        assert out["i_out"]["data"] == [1, -2, 3, 2**40] and out["i_out"]["shape"] == [2, 2]
        assert out["b_out"]["data"] == [True, False] and out["b_out"]["datatype"] == "BOOL"

        body["parameters"] = {"binary_data_output": True}
        r = c.post("/v2/models/mixed/infer", json=body)
        hlen = int(r.headers["inference-header-content-length"])
        sizes = [
            t["parameters"]["binary_data_size"] for t in orjson.loads(r.content[:hlen])["outputs"]
        ]
        blob = r.content[hlen:]
        assert blob[: sizes[0]] == b"\x06\x00\x00\x00h\xc3\xa9llo\x00\x00\x00\x00"
        ints = np.frombuffer(blob[sizes[0] : sizes[0] + sizes[1]], np.int64)
        assert ints.tolist() == [1, -2, 3, 2**40]
        assert blob[sizes[0] + sizes[1] :] == b"\x01\x00"

        rows = {
            "instances": [{"s": "a", "i": [1, 2], "b": True}, {"s": "b", "i": [3, 4], "b": False}]
        }
        r = c.post("/v1/models/mixed:predict", json=rows)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][1] == {"s_out": "b", "i_out": [3, 4], "b_out": False}

        wrong = {
            "inputs": [
                {**body["inputs"][0], "datatype": "FP32", "data": [1.0, 2.0]},
                *body["inputs"][1:],
            ]
        }
        r = c.post("/v2/models/mixed/infer", json=wrong)
        assert r.status_code == 400
        assert r.json() == {
            "error": "input 's': datatype FP32 does not match; the model expects BYTES"
        }


def test_nan_strings_are_a_400_like_any_other_string(client: TestClient) -> None:
    for text in ("x", "NaN"):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": [text] * 64}]}  # fmt: skip
        r = client.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 400
        assert r.json()["error"].startswith("input 'input'.data cannot be read as FP32")
