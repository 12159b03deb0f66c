"""The Open Inference Protocol over gRPC: unmodified tritonclient.grpc (sync, asyncio and
stream_infer) against a real `modelservice serve` on loopback, and typed contents through
the runtime's own stubs (tritonclient always sends raw). Expected values come from
onnxruntime in-process; the inputs are the edge values of test_tensor_types.py.

One model carries every datatype the REST side serves (x_<TYPE> -> y_<TYPE>), so one server
answers every datatype test, typed and raw; bad input of every kind is answered with its
status code and the field named, and the server is alive afterwards.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2_grpc as pb_grpc
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.integration.kserve_client import run_kserve_client
from tests.integration.processes import free_port
from tests.integration.runtime_server import Served, metric, serve
from tests.integration.test_tensor_types import (
    TYPES,
    as_bytes,
    assert_same,
    reference,
    tensor_blob,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
OPSET = [helper.make_opsetid("", 17)]

# Every datatype: test_tensor_types' edge values, and the rest of the integer and float types.
ALL_TYPES: dict[str, tuple[int, Any, list[Any]]] = {
    **TYPES,
    "FP32": (TensorProto.FLOAT, np.float32, [[-1.5, 0.0, 3.4e38], [1e-30, 2.5, -7.25]]),
    "FP64": (TensorProto.DOUBLE, np.float64, [[-1.5, 0.0, 1e300], [1e-300, 2.5, -7.25]]),
    "INT16": (TensorProto.INT16, np.int16, [[-32768, -1, 0], [1, 1000, 32767]]),
    "INT32": (TensorProto.INT32, np.int32, [[-(2**31), -1, 0], [1, 2**20, 2**31 - 1]]),
    "UINT16": (TensorProto.UINT16, np.uint16, [[0, 1, 65535], [256, 1000, 32768]]),
    "UINT32": (TensorProto.UINT32, np.uint32, [[0, 1, 2**32 - 1], [256, 2**31, 7]]),
    "UINT64": (TensorProto.UINT64, np.uint64, [[0, 1, 2**64 - 1], [2**53 + 1, 2**63, 7]]),
}
ADDS = {"FP16", "FP32", "FP64", "INT8", "UINT8", "INT32", "INT64", "UINT32", "UINT64"}


def every_type_model(path: Path) -> Path:
    """x_<T> [N, 3] -> y_<T> [N, 3] for every T: x + 7 (where onnxruntime adds that type),
    not x (BOOL), x itself (the rest)."""
    nodes, inits, inputs, outputs = [], [], [], []
    for datatype, (elem, np_type, _) in ALL_TYPES.items():
        x, y = f"x_{datatype}", f"y_{datatype}"
        if datatype == "BOOL":
            nodes.append(helper.make_node("Not", [x], [y]))
        elif datatype in ADDS:
            c = f"c_{datatype}"
            inits.append(helper.make_tensor(c, elem, [], np.array([7], np_type).tobytes(), True))
            nodes.append(helper.make_node("Add", [x, c], [y]))
        else:
            nodes.append(helper.make_node("Identity", [x], [y]))
        inputs.append(helper.make_tensor_value_info(x, elem, ["N", 3]))
        outputs.append(helper.make_tensor_value_info(y, elem, ["N", 3]))
    graph = helper.make_graph(nodes, "every", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def typed_input(datatype: str) -> np.ndarray:
    _, np_type, values = ALL_TYPES[datatype]
    return np.array(values, dtype=np_type)


def all_inputs() -> dict[str, np.ndarray]:
    return {f"x_{t}": typed_input(t) for t in ALL_TYPES}


class GrpcServed:
    def __init__(self, served: Served, grpc_port: int) -> None:
        self.served = served
        self.grpc_port = grpc_port
        self.target = f"127.0.0.1:{grpc_port}"

    def client(self) -> tgrpc.InferenceServerClient:
        return tgrpc.InferenceServerClient(self.target)

    def alive(self) -> None:
        """The server still answers both front ends."""
        client = self.client()
        try:
            assert client.is_server_live() and client.is_server_ready()
        finally:
            client.close()
        assert httpx.get(self.served.url + "/v2/health/ready", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def every(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, GrpcServed]]:
    path = every_type_model(tmp_path_factory.mktemp("grpc") / "every.onnx")
    port = free_port()
    # A small request limit, so the oversize test needs no big message; batching on.
    with serve(path, "--grpc-port", str(port), "--max-request-bytes", "65536") as served:
        yield path, GrpcServed(served, port)


def triton_inputs(inputs: dict[str, np.ndarray]) -> list[tgrpc.InferInput]:
    out = []
    for name, arr in inputs.items():
        datatype = name.split("_", 1)[1]
        inp = tgrpc.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


# --- metadata, health, config, statistics ---------------------------------------------------


def test_metadata_health_config_index(every: tuple[Path, GrpcServed]) -> None:
    _, server = every
    client = server.client()
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("every")
        meta = client.get_server_metadata(as_json=True)
        assert meta["name"] == "modelservice" and "version" in meta
        model = client.get_model_metadata("every", as_json=True)
        assert model["name"] == "every" and model["versions"] == ["1"]
        assert model["platform"] == "onnxruntime_onnx"
        assert {"name": "x_FP16", "datatype": "FP16", "shape": ["-1", "3"]} in model["inputs"]
        assert len(model["outputs"]) == len(ALL_TYPES)
        config = client.get_model_config("every", as_json=True)["config"]
        assert config["name"] == "every" and config["max_batch_size"] == 32
        assert config["backend"] == "onnxruntime"
        byname = {t["name"]: t for t in config["input"]}
        assert byname["x_BYTES"] == {"name": "x_BYTES", "data_type": "TYPE_STRING", "dims": ["3"]}
        assert byname["x_FP16"]["data_type"] == "TYPE_FP16"
        assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "500"}
        index = client.get_model_repository_index(as_json=True)
        assert index["models"] == [{"name": "every", "version": "1", "state": "READY"}]
    finally:
        client.close()
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_statistics_and_metrics_count_grpc_requests(every: tuple[Path, GrpcServed]) -> None:
    """One data plane: a gRPC request counts in /metrics and in ModelStatistics alike."""
    _, server = every
    before = metric(server.served.url, "nv_inference_request_success")
    client = server.client()
    try:
        client.infer("every", triton_inputs(all_inputs()))
        stats = client.get_inference_statistics("every", as_json=True)["model_stats"][0]
    finally:
        client.close()
    after = metric(server.served.url, "nv_inference_request_success")
    assert after == before + 1
    assert int(stats["inference_stats"]["success"]["count"]) == after
    assert int(stats["inference_count"]) >= 2 * after  # two rows a request


# --- every datatype, raw (tritonclient) and typed (contents) --------------------------------


def test_every_datatype_raw_with_tritonclient(every: tuple[Path, GrpcServed]) -> None:
    path, server = every
    inputs = all_inputs()
    want = reference(path, inputs)
    client = server.client()
    try:
        result = client.infer("every", triton_inputs(inputs), request_id="r-1")
        response = result.get_response()
        assert response.id == "r-1" and response.model_name == "every"
        assert len(response.raw_output_contents) == len(ALL_TYPES)  # Triton's form: raw
        for datatype in ALL_TYPES:
            got = result.as_numpy(f"y_{datatype}")
            assert result.get_output(f"y_{datatype}").datatype == datatype
            assert_same(got, want[f"y_{datatype}"], datatype)
    finally:
        client.close()


# The protocol's typed field of each datatype (grpc_predict_v2.proto).
FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def typed_contents(arr: np.ndarray, datatype: str) -> pb.InferTensorContents:
    contents = pb.InferTensorContents()
    values = as_bytes(arr) if datatype == "BYTES" else arr.reshape(-1).tolist()
    getattr(contents, FIELD[datatype]).extend(values)
    return contents


def typed_request(model: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    tensors = []
    for name, arr in inputs.items():
        datatype = name.split("_", 1)[1]
        tensors.append(
            pb.ModelInferRequest.InferInputTensor(
                name=name,
                datatype=datatype,
                shape=arr.shape,
                contents=typed_contents(arr, datatype),
            )
        )
    return pb.ModelInferRequest(model_name=model, inputs=tensors)


def decode_typed(tensor: Any) -> np.ndarray:
    datatype = tensor.datatype
    values = list(getattr(tensor.contents, FIELD[datatype]))
    if datatype == "BYTES":
        return np.array(values, dtype=np.object_).reshape(tuple(tensor.shape))
    return np.array(values, dtype=ALL_TYPES[datatype][1]).reshape(tuple(tensor.shape))


def test_fp16_typed_is_refused_naming_it(every: tuple[Path, GrpcServed]) -> None:
    """FP16 has no typed field: typed FP16 is refused, naming the input and what to do."""
    _, server = every
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        contents = pb.InferTensorContents(fp32_contents=typed_input("FP16").reshape(-1))
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="x_FP16", datatype="FP16", shape=[2, 3], contents=contents
        )
        request = pb.ModelInferRequest(model_name="every", inputs=[tensor])
        error = rpc_error(lambda: stub.ModelInfer(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input 'x_FP16': FP16 has no typed contents field; send it in raw_input_contents"
    )


@pytest.fixture(scope="module")
def no_fp16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, GrpcServed]]:
    """The every-type model without FP16: every input can travel typed."""
    path = tmp_path_factory.mktemp("grpc-typed") / "typed.onnx"
    fp16 = ALL_TYPES.pop("FP16")
    try:
        every_type_model(path)
    finally:
        ALL_TYPES["FP16"] = fp16
    port = free_port()
    with serve(path, "--grpc-port", str(port)) as served:
        yield path, GrpcServed(served, port)


def test_every_typed_datatype_round_trips(no_fp16: tuple[Path, GrpcServed]) -> None:
    path, server = no_fp16
    inputs = {k: v for k, v in all_inputs().items() if k != "x_FP16"}
    want = reference(path, inputs)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(typed_request("typed", inputs), timeout=10)
    assert not response.raw_output_contents  # a typed request gets typed contents
    got = {t.name: t for t in response.outputs}
    assert len(got) == len(inputs)
    for name, tensor in got.items():
        datatype = name.split("_", 1)[1]
        assert tensor.datatype == datatype
        assert_same(decode_typed(tensor), want[name], datatype)


def test_fp16_output_of_a_typed_request_comes_raw(every: tuple[Path, GrpcServed]) -> None:
    """An FP16 output has no typed field: the answer is raw, all of it (one form per answer);
    FP16 input in raw_input_contents next to typed ones is refused as mixed forms."""
    path, server = every
    inputs = all_inputs()
    want = reference(path, inputs)
    # tritonclient sends raw; ask for FP16 and BYTES outputs only, in that order
    client = server.client()
    try:
        outputs = [tgrpc.InferRequestedOutput("y_BYTES"), tgrpc.InferRequestedOutput("y_FP16")]
        result = client.infer("every", triton_inputs(inputs), outputs=outputs)
        names = [o.name for o in result.get_response().outputs]
        assert names == ["y_BYTES", "y_FP16"]
        assert_same(result.as_numpy("y_FP16"), want["y_FP16"], "FP16")
        assert_same(result.as_numpy("y_BYTES"), want["y_BYTES"], "BYTES")
    finally:
        client.close()


# --- bad input: status codes naming the field, the server alive after -----------------------


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_bad_inputs_are_refused_with_the_field_named(every: tuple[Path, GrpcServed]) -> None:
    _, server = every
    inputs = all_inputs()
    with grpc.insecure_channel(
        server.target, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def raw(name: str, datatype: str, shape: list[int], blob: bytes) -> pb.ModelInferRequest:
            """Every input as tritonclient sends it, `name` replaced by the given one."""
            request = pb.ModelInferRequest(model_name="every")
            for other, arr in inputs.items():
                if other != name:
                    kind = other.split("_", 1)[1]
                    request.inputs.add(name=other, datatype=kind, shape=arr.shape)
                    request.raw_input_contents.append(tensor_blob(arr, kind))
            request.inputs.add(name=name, datatype=datatype, shape=shape)
            request.raw_input_contents.append(blob)
            return request

        x = inputs["x_FP32"]
        cases = [
            # wrong datatype: REST's own words
            (
                raw("x_FP32", "FP64", [2, 3], np.zeros((2, 3)).tobytes()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x_FP32': datatype FP64 does not match; the model expects FP32",
            ),
            # wrong shape
            (
                raw("x_FP32", "FP32", [2, 4], np.zeros((2, 4), np.float32).tobytes()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x_FP32'",
            ),
            # raw bytes that do not fit the shape
            (
                raw("x_FP32", "FP32", [2, 3], x.tobytes()[:-4]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x_FP32': raw_input_contents[12] is 20 bytes but shape [2, 3] of FP32 "
                "needs 24 bytes",
            ),
            # BF16 refused as REST refuses it
            (
                raw("x_FP32", "BF16", [2, 3], bytes(12)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "input 'x_FP32'.datatype: unknown datatype 'BF16', expected one of ",
            ),
            # unknown model
            (
                pb.ModelInferRequest(model_name="nope", inputs=[]),
                grpc.StatusCode.NOT_FOUND,
                "model 'nope' not found; this server serves ['every']",
            ),
            # no model name
            (
                pb.ModelInferRequest(inputs=[]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "model_name must name the model",
            ),
            # unknown output
            (
                pb.ModelInferRequest(
                    model_name="every",
                    inputs=[],
                    outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="zz")],
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "inputs must be a non-empty list of tensors",
            ),
            # a raw entry count that does not match the inputs
            (
                pb.ModelInferRequest(
                    model_name="every",
                    inputs=[pb.ModelInferRequest.InferInputTensor(name="a", datatype="FP32")],
                    raw_input_contents=[b"", b""],
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "raw_input_contents has 2 entries but there are 1 inputs",
            ),
            # over --max-request-bytes (64 KiB here): gRPC's own refusal
            (
                raw("x_FP32", "FP32", [10000, 3], np.zeros((10000, 3), np.float32).tobytes()),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
            ),
        ]
        for request, code, message in cases:
            error = rpc_error(lambda r=request: stub.ModelInfer(r, timeout=10))
            assert error.code() == code, (request.inputs[:1], error.details())
            assert message in (error.details() or ""), error.details()
        error = rpc_error(
            lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=10)
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
    server.alive()


def test_every_model_input_must_be_given_and_outputs_must_exist(
    every: tuple[Path, GrpcServed],
) -> None:
    _, server = every
    client = server.client()
    try:
        inputs = all_inputs()
        with pytest.raises(InferenceServerException) as e:
            client.infer(
                "every", triton_inputs(inputs), outputs=[tgrpc.InferRequestedOutput("nope")]
            )
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "unknown output 'nope'" in e.value.message()
        del inputs["x_INT8"]
        with pytest.raises(InferenceServerException) as e:
            client.infer("every", triton_inputs(inputs))
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "x_INT8" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.unregister_system_shared_memory()
        assert e.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "shared memory is not supported" in e.value.message()
    finally:
        client.close()
    server.alive()


# --- asyncio client and streaming -----------------------------------------------------------


def test_asyncio_client_concurrent_requests(every: tuple[Path, GrpcServed]) -> None:
    path, server = every
    inputs = all_inputs()
    want = reference(path, inputs)

    async def run() -> list[Any]:
        client = tgrpc_aio.InferenceServerClient(server.target)
        try:
            assert await client.is_model_ready("every")
            return await asyncio.gather(
                *(client.infer("every", triton_inputs(inputs)) for _ in range(16))
            )
        finally:
            await client.close()

    for result in asyncio.run(run()):
        for datatype in ALL_TYPES:
            assert_same(result.as_numpy(f"y_{datatype}"), want[f"y_{datatype}"], datatype)


def test_stream_infer_answers_in_order_and_reports_errors(
    every: tuple[Path, GrpcServed],
) -> None:
    """tritonclient's stream_infer: every request answered on the stream, a bad one as an
    error in the callback, and the stream goes on."""
    path, server = every
    inputs = all_inputs()
    want = reference(path, inputs)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = server.client()
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(8):
            sent = triton_inputs(inputs)
            if i == 3:
                sent = sent[1:]  # a missing input
            client.async_stream_infer("every", sent, request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(8)]
        client.stop_stream()
    finally:
        client.close()
    for i, (result, error) in enumerate(got):
        if i == 3:
            assert result is None and error is not None
            assert "missing" in str(error) or "input" in str(error), str(error)
            continue
        assert error is None, error
        assert result.get_response().id == str(i)
        assert_same(result.as_numpy("y_INT64"), want["y_INT64"], "INT64")
    server.alive()


# --- auth, workers, drain --------------------------------------------------------------------


def test_bearer_token_as_metadata(mlp_onnx: Path) -> None:
    port = free_port()
    env = {"MODELSERVICE_AUTH_TOKEN": "s3cret"}
    with serve(mlp_onnx, "--grpc-port", str(port), env=env):
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert client.is_server_live() and client.is_server_ready()  # probes stay open
            x = tgrpc.InferInput("input", [1, 64], "FP32")
            x.set_data_from_numpy(np.ones((1, 64), np.float32))
            with pytest.raises(InferenceServerException) as e:
                client.infer("mlp", [x])
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            assert "missing Authorization" in e.value.message()
            with pytest.raises(InferenceServerException) as e:
                client.infer("mlp", [x], headers={"authorization": "Bearer wrong"})
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            result = client.infer("mlp", [x], headers={"authorization": "Bearer s3cret"})
            assert result.as_numpy("output").shape == (1, 10)
        finally:
            client.close()


def test_workers_share_the_grpc_port_and_drain(mlp_onnx: Path) -> None:
    """--workers 2: both workers bind the gRPC port (SO_REUSEPORT); many connections are all
    answered with the in-process result; SIGTERM stops the server cleanly (exit 0)."""
    port = free_port()
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    want = reference(mlp_onnx, {"input": x})["output"]
    with serve(mlp_onnx, "--grpc-port", str(port), "--workers", "2") as served:
        for _ in range(12):  # a new connection each: the kernel spreads them over workers
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
            try:
                inp = tgrpc.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                got = client.infer("mlp", [inp]).as_numpy("output")
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            finally:
                client.close()
        assert metric(served.url, "nv_inference_request_success") == 12
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.log_tail()


def test_sigterm_drains_a_grpc_call_in_flight(tmp_path: Path) -> None:
    """A call running when SIGTERM comes is answered; the server then exits 0."""
    from tests.integration.runtime_server import rows_to_hold, slow_model, wait_pending

    path = slow_model(tmp_path / "slow.onnx")
    port = free_port()
    with serve(path, "--grpc-port", str(port), "--max-batch-size", "1") as served:
        rows = rows_to_hold(served.url, seconds=2.0)
        results: queue.Queue[Any] = queue.Queue()
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tgrpc.InferInput("input", [rows, 512], "FP32")
        inp.set_data_from_numpy(np.ones((rows, 512), np.float32))
        client.async_infer(
            "slow", [inp], callback=lambda result, error: results.put((result, error))
        )
        wait_pending(served.url, 1)
        served.proc.send_signal(signal.SIGTERM)
        result, error = results.get(timeout=60)
        client.close()
        assert error is None, (error.status(), error.message(), served.log_tail())
        assert result.as_numpy("output").shape == (rows, 512)
        assert served.proc.wait(timeout=30) == 0, served.log_tail()


def test_grpc_port_taken_is_an_error_at_start(mlp_onnx: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from tests.integration.runtime_server import serve_command

        proc = subprocess.run(
            [*serve_command(), "serve", str(mlp_onnx), "--host", "127.0.0.1",
             "--port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in proc.stderr, proc.stderr


def _slow_input(rows: int) -> list[tgrpc.InferInput]:
    inp = tgrpc.InferInput("input", [rows, 512], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 512), np.float32))
    return [inp]


def test_queue_full_is_unavailable_with_rests_message(tmp_path: Path) -> None:
    """The same queue bound as REST's 503: two calls hold both runs (batching off), one waits
    (--max-queue-size 1), one more gets UNAVAILABLE at once; the accepted ones are answered."""
    from tests.integration.runtime_server import rows_to_hold, slow_model, wait_pending

    path = slow_model(tmp_path / "slow.onnx")
    port = free_port()
    args = ("--grpc-port", str(port), "--max-batch-size", "0", "--max-queue-size", "1")
    with serve(path, *args) as served:
        heavy = rows_to_hold(served.url)
        answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:

            def send(rows: int) -> None:
                client.async_infer(
                    "slow",
                    _slow_input(rows),
                    callback=lambda result, error: answers.put((result, error)),
                )

            def seen(count: int) -> None:
                try:
                    wait_pending(served.url, count)
                except AssertionError as e:  # say what the calls sent so far got
                    early = [
                        (r, None if err is None else (err.status(), err.message()))
                        for r, err in (answers.get_nowait() for _ in range(answers.qsize()))
                    ]
                    raise AssertionError(f"{e}; answered meanwhile: {early}") from None

            send(heavy)
            seen(1)
            send(heavy)
            seen(2)
            send(1)
            seen(3)
            with pytest.raises(InferenceServerException) as refused:
                client.infer("slow", _slow_input(1))
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            assert refused.value.message() == (
                "the request queue is full (1 requests waiting); retry after a moment"
            )
            got = [answers.get(timeout=120) for _ in range(3)]
        finally:
            client.close()
        assert [error for _, error in got] == [None, None, None]
        GrpcServed(served, port).alive()


def test_draining_is_not_serving_then_exit(mlp_onnx: Path) -> None:
    """SIGTERM: through --shutdown-delay-s the health service says NOT_SERVING and
    ServerReady is false while calls are still answered; then the server exits 0."""
    port = free_port()
    with serve(mlp_onnx, "--grpc-port", str(port), "--shutdown-delay-s", "3") as served:
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            assert health.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
            served.proc.send_signal(signal.SIGTERM)
            wait_until(
                "health to leave SERVING after SIGTERM",
                lambda: (
                    health.Check(request, timeout=5).status
                    != health_pb2.HealthCheckResponse.SERVING
                ),
                timeout=2,
                interval=0.05,
            )
            client = tgrpc.InferenceServerClient(target)
            try:
                assert not client.is_server_ready()
                x = tgrpc.InferInput("input", [1, 64], "FP32")
                x.set_data_from_numpy(np.ones((1, 64), np.float32))
                assert client.infer("mlp", [x]).as_numpy("output").shape == (1, 10)
            finally:
                client.close()
        assert served.proc.wait(timeout=30) == 0, served.log_tail()


# --- KServe's client --------------------------------------------------------------------------


def test_kserve_inference_grpc_client(mlp_onnx: Path, tmp_path: Path) -> None:
    """kserve's InferenceGRPCClient (its own venv): health, raw and typed infer, NOT_FOUND."""
    port = free_port()
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    want = reference(mlp_onnx, {"input": x})["output"]
    with serve(mlp_onnx, "--grpc-port", str(port)):
        out = run_kserve_client(tmp_path, f"127.0.0.1:{port}", "mlp", x)
    assert out["live"] and out["ready"] and out["model_ready"]
    for form in ("raw", "typed"):
        request_id, got = out[form]
        assert request_id == "k1"
        np.testing.assert_allclose(np.array(got, np.float32), want, rtol=1e-5, atol=1e-6)
    assert out["unknown"] == ["NOT_FOUND", "model 'nope' not found; this server serves ['mlp']"]
