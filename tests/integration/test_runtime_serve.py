"""`modelservice serve` as a subprocess on loopback, against models exported by torch:
numerics, batching under 64 concurrent callers, tritonclient, V1, metrics, backpressure and
graceful shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton

from tests.integration.runtime_server import (
    Served,
    binary_body,
    cpu_only_onnxruntime,
    metric,
    rows_to_hold,
    serve,
    serve_command,
    slow_model,
    wait_pending,
)


def reference(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def decode(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    hlen = response.headers.get("inference-header-content-length")
    if hlen is None:
        (out,) = response.json()["outputs"]
        return np.array(out["data"], np.float32).reshape(out["shape"])
    head = orjson.loads(response.content[: int(hlen)])
    return np.frombuffer(response.content[int(hlen) :], np.float32).reshape(
        head["outputs"][0]["shape"]
    )


@pytest.fixture(scope="module")
def mlp_server(mlp_onnx: Path) -> Iterator[Served]:
    with serve(mlp_onnx) as served:
        yield served


def test_numerics_equal_in_process_onnxruntime(mlp_server: Served, mlp_onnx: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 64), np.float32)
    want = reference(mlp_onnx, x)
    url = mlp_server.url + "/v2/models/mlp/infer"
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [5, 64], "data": x.ravel().tolist()}
        ]
    }
    np.testing.assert_array_equal(decode(httpx.post(url, json=body)), want)
    content, headers = binary_body(x)
    np.testing.assert_array_equal(decode(httpx.post(url, content=content, headers=headers)), want)
    v1 = httpx.post(mlp_server.url + "/v1/models/mlp:predict", json={"instances": x.tolist()})
    np.testing.assert_allclose(np.array(v1.json()["predictions"], np.float32), want, rtol=1e-6)
    legacy = httpx.post(mlp_server.url + "/predict", json={"instances": x.tolist()})
    np.testing.assert_allclose(np.array(legacy.json()["predictions"], np.float32), want, rtol=1e-6)


def test_64_concurrent_callers_each_get_their_own_rows(mlp_server: Served, mlp_onnx: Path):
    rng = np.random.default_rng(1)
    # Mixed batch sizes, JSON and binary, one request over --max-batch-size (32).
    xs = [rng.standard_normal((int(rng.integers(1, 6)), 64), np.float32) for _ in range(63)]
    xs.append(rng.standard_normal((40, 64), np.float32))
    session = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"])
    alone = [session.run(None, {"input": x})[0] for x in xs]
    execs_before = metric(mlp_server.url, "nv_inference_exec_count")

    async def call(client: httpx.AsyncClient, i: int, x: np.ndarray) -> np.ndarray:
        url = "/v2/models/mlp/infer"
        if i % 2:
            content, headers = binary_body(x)
            return decode(await client.post(url, content=content, headers=headers))
        body = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
        return decode(await client.post(url, json=body))

    async def main() -> list[np.ndarray]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=mlp_server.url, limits=limits, timeout=30) as c:
            return await asyncio.gather(*(call(c, i, x) for i, x in enumerate(xs)))

    results = asyncio.run(main())
    for want, got in zip(alone, results, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    executions = metric(mlp_server.url, "nv_inference_exec_count") - execs_before
    assert executions < len(xs), "64 concurrent requests should have been coalesced"


@pytest.mark.parametrize("binary", [False, True])
def test_unmodified_tritonclient(mlp_server: Served, mlp_onnx: Path, binary: bool) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{mlp_server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and not client.is_model_ready("nope")
        assert client.get_server_metadata()["name"] == "modelservice"
        meta = client.get_model_metadata("mlp")
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
        assert client.get_model_config("mlp")["max_batch_size"] == 32
        x = np.random.default_rng(2).standard_normal((3, 64), np.float32)
        inp = triton.InferInput("input", [3, 64], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("mlp", [inp], outputs=[out], request_id="t-1")
        np.testing.assert_allclose(result.as_numpy("output"), reference(mlp_onnx, x), rtol=1e-6)
        assert result.get_response()["id"] == "t-1"
        for algorithm in ("gzip", "deflate"):
            compressed = client.infer(
                "mlp", [inp], outputs=[out], request_compression_algorithm=algorithm
            )
            np.testing.assert_allclose(
                compressed.as_numpy("output"), reference(mlp_onnx, x), rtol=1e-6
            )
        with pytest.raises(triton.InferenceServerException, match="unknown input 'wrong'"):
            bad = triton.InferInput("wrong", [3, 64], "FP32")
            bad.set_data_from_numpy(x, binary_data=binary)
            client.infer("mlp", [bad])
    finally:
        client.close()


def test_metrics_increase(mlp_server: Served) -> None:
    before = metric(mlp_server.url, "nv_inference_request_success")
    body = {"instances": [[0.0] * 64]}
    for _ in range(3):
        httpx.post(mlp_server.url + "/v1/models/mlp:predict", json=body).raise_for_status()
    assert metric(mlp_server.url, "nv_inference_request_success") == before + 3


def _read_response(conn: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 response with a Content-Length."""
    from tests.integration.test_faults_runtime import _complete

    data = b""
    while not _complete(data):
        data += conn.recv(65536) or pytest.fail(f"connection closed mid-response: {data[:200]!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_request_bodies_arrive_whole_however_they_are_cut(mlp_server: Served, mlp_onnx: Path):
    """A body in one piece, trickled in many TCP segments, chunked, or several requests back
    to back on one connection: each reaches the model whole (the binary parser checks every
    byte count, so a piece lost or repeated is a 400, not a wrong answer)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((200, 64), np.float32)  # 51 KB of tensor data
    want = reference(mlp_onnx, x)
    path = "/v2/models/mlp/infer"
    content, headers = binary_body(x)
    got = decode(httpx.post(mlp_server.url + path, content=content, headers=headers))
    np.testing.assert_array_equal(got, want)

    def pieces():
        for start in range(0, len(content), 7001):
            yield content[start : start + 7001]

    chunked = httpx.post(mlp_server.url + path, content=pieces(), headers=headers, timeout=30)
    np.testing.assert_array_equal(decode(chunked), want)

    ys = [rng.standard_normal((n, 64), np.float32) for n in (3, 120, 1)]
    with socket.create_connection(("127.0.0.1", mlp_server.port), timeout=30) as conn:
        for y in (x, *ys):  # one kept-alive connection; each body trickled in 5 pieces
            body, h = binary_body(y)
            conn.sendall(
                f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
                f"Inference-Header-Content-Length: {h['Inference-Header-Content-Length']}"
                "\r\n\r\n".encode()
            )
            step = len(body) // 5 + 1
            for start in range(0, len(body), step):
                conn.sendall(body[start : start + step])
                time.sleep(0.02)  # separate segments, so the parser sees separate pieces
            head, answer = _read_response(conn)
            assert head.startswith(b"HTTP/1.1 200"), head
            out_len = int(
                next(
                    line.split(b":")[1] for line in head.split(b"\r\n")
                    if line.lower().startswith(b"inference-header-content-length:")
                )
            )  # fmt: skip
            np.testing.assert_array_equal(
                np.frombuffer(answer[out_len:], np.float32).reshape(len(y), -1),
                reference(mlp_onnx, y),
            )


def test_cnn_binary_matches_in_process(cnn_onnx: Path) -> None:
    x = np.random.default_rng(3).random((4, 3, 64, 64), np.float32)
    with serve(cnn_onnx, "--max-batch-size", "8") as served:
        content, headers = binary_body(x)
        got = decode(
            httpx.post(
                served.url + "/v2/models/cnn/infer", content=content, headers=headers, timeout=30
            )
        )
    np.testing.assert_allclose(got, reference(cnn_onnx, x), rtol=1e-5, atol=1e-6)


def test_queue_full_is_503_and_sigterm_drains_in_flight_after_unready(tmp_path: Path) -> None:
    """One request holds the single batch worker for seconds (a slow model) and 8 small ones
    queue behind it, filling --max-queue-size 8 (all 9 seen in the pending gauge): a 10th is
    refused with 503. SIGTERM then turns readiness false while all 9 are still in flight,
    and every one of them is answered 200 before the process exits 0."""
    # The shutdown delay is the window in which readiness is asked after SIGTERM: 0.5 s was
    # too short on a loaded machine (the port had closed: ConnectError).
    args = ("--max-queue-size", "8", "--max-batch-size", "8", "--shutdown-delay-s", "3")
    with serve(slow_model(tmp_path / "slow.onnx"), *args) as served:
        url = served.url + "/v2/models/slow/infer"
        small, small_headers = binary_body(np.ones((1, 512), np.float32))
        big, big_headers = binary_body(np.ones((rows_to_hold(served.url), 512), np.float32))
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            calls = [pool.submit(httpx.post, url, content=big, headers=big_headers, timeout=300)]
            wait_pending(served.url, 1)  # the big one runs: the next ones queue behind it
            calls += [
                pool.submit(httpx.post, url, content=small, headers=small_headers, timeout=300)
                for _ in range(8)
            ]
            wait_pending(served.url, 9)

            refused = httpx.post(url, content=small, headers=small_headers, timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "queue is full (8 requests waiting)" in refused.json()["error"]

            served.proc.send_signal(signal.SIGTERM)
            ready = httpx.get(served.url + "/v2/health/ready", timeout=10)
            assert ready.status_code == 503
            assert ready.json() == {"error": "the server is shutting down"}
            assert not any(c.done() for c in calls), "readiness must turn false while in flight"
            statuses = [c.result().status_code for c in calls]
        assert statuses == [200] * 9  # every accepted request answered
        assert served.proc.wait(timeout=20) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(served.url + "/v2/health/live", timeout=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--execution-provider", "cuda"), "--execution-provider cuda: this onnxruntime offers"),
        (("--normalize-mean", "0.5,0.5"), "--normalize-mean and --normalize-std must be given"),
    ],
)
def test_serve_refuses_to_start_with_a_clear_message(
    mlp_onnx: Path, args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [*serve_command(), "serve", str(mlp_onnx), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **cpu_only_onnxruntime(tmp_path)},  # the same on a GPU machine
    )
    assert done.returncode != 0
    assert message in done.stderr


def test_a_file_that_is_not_onnx_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("<html>404</html>")
    done = subprocess.run(
        [*serve_command(), "serve", str(bad), "--host", "127.0.0.1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    # told from its first bytes before anything starts (test_serve_first_mistakes.py)
    assert f"modelservice serve: {bad}: not an ONNX model (a text file (.onnx))" in done.stderr
