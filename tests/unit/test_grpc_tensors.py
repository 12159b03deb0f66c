"""grpc_front/tensors.py: ModelInferRequest <-> numpy, pure functions (no server).

The wire bytes are made here by hand from the protocol's rules (little-endian, BYTES as
4-byte length prefixes), so a wrong byte order or field would show; the refusals name the
input and the field. The end-to-end checks with tritonclient are in
tests/integration/test_grpc.py."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb
from modelservice_runtime.serving.grpc_front.service import CODES, model_config
from modelservice_runtime.serving.grpc_front.tensors import (
    build_infer_response,
    parse_infer_request,
)

Tensor = pb.ModelInferRequest.InferInputTensor


def raw_request(*tensors: tuple[str, str, list[int], bytes]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m",
        inputs=[Tensor(name=n, datatype=d, shape=s) for n, d, s, _ in tensors],
        raw_input_contents=[b for *_, b in tensors],
    )


def test_raw_inputs_are_little_endian_views() -> None:
    blob = struct.pack("<3h", -2, 0, 300)
    req = parse_infer_request(raw_request(("x", "INT16", [1, 3], blob)))
    assert req.raw and req.outputs is None
    np.testing.assert_array_equal(req.inputs["x"], np.array([[-2, 0, 300]], np.int16))
    assert not req.inputs["x"].flags.owndata  # a view of the message's bytes, not a copy


def test_raw_bytes_and_bool() -> None:
    text = b"".join(struct.pack("<I", len(v)) + v for v in (b"a", "é".encode(), b""))
    req = parse_infer_request(
        raw_request(("s", "BYTES", [3], text), ("b", "BOOL", [2], b"\x01\x00"))
    )
    assert list(req.inputs["s"]) == ["a", "é", ""]
    assert req.inputs["b"].tolist() == [True, False]


def test_typed_inputs_of_each_field() -> None:
    req = parse_infer_request(
        pb.ModelInferRequest(
            inputs=[
                Tensor(name="i8", datatype="INT8", shape=[2],
                       contents=pb.InferTensorContents(int_contents=[-128, 127])),
                Tensor(name="u64", datatype="UINT64", shape=[1],
                       contents=pb.InferTensorContents(uint64_contents=[2**64 - 1])),
                Tensor(name="s", datatype="BYTES", shape=[1],
                       contents=pb.InferTensorContents(bytes_contents=["日本".encode()])),
            ],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
        )
    )  # fmt: skip
    assert not req.raw and req.outputs == ["y"]
    assert req.inputs["i8"].dtype == np.int8 and req.inputs["i8"].tolist() == [-128, 127]
    assert req.inputs["u64"].tolist() == [2**64 - 1]
    assert req.inputs["s"].tolist() == ["日本"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ModelInferRequest(), "inputs must be a non-empty list of tensors"),
        (
            raw_request(("x", "FP32", [2], b"\0" * 4)),
            "input 'x': raw_input_contents[0] is 4 bytes but shape [2] of FP32 needs 8 bytes",
        ),
        (
            raw_request(("x", "FP32", [-1], b"")),
            "input 'x'.shape must be a list of non-negative integers, got [-1]",
        ),
        (
            raw_request(("x", "FP32", [1], b"\0" * 4), ("x", "FP32", [1], b"\0" * 4)),
            "input 'x' appears more than once; expected each input once",
        ),
        (raw_request(("", "FP32", [1], b"\0" * 4)), "inputs[0].name must be a non-empty string"),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="x",
                        datatype="INT8",
                        shape=[1],
                        contents=pb.InferTensorContents(int_contents=[200]),
                    )
                ]
            ),
            "input 'x': contents.int_contents value 200 is out of range for INT8 (-128..127)",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="x",
                        datatype="FP32",
                        shape=[2],
                        contents=pb.InferTensorContents(fp64_contents=[1.0, 2.0]),
                    )
                ]
            ),
            "input 'x': contents.fp32_contents has 0 values but shape [2] needs 2 (it has "
            "fp64_contents: the wrong field for FP32)",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="x",
                        datatype="BYTES",
                        shape=[1],
                        contents=pb.InferTensorContents(bytes_contents=[b"\xff"]),
                    )
                ]
            ),
            "input 'x': BYTES element 0 is not UTF-8 (invalid start byte at byte 0); "
            "expected text: the model's tensor(string) carries UTF-8 only",
        ),
        (
            pb.ModelInferRequest(
                inputs=[
                    Tensor(
                        name="x",
                        datatype="FP32",
                        shape=[1],
                        contents=pb.InferTensorContents(fp32_contents=[1.0]),
                    )
                ],
                raw_input_contents=[b"\0" * 4],
            ),
            "input 'x' has contents but the request has raw_input_contents; expected one form "
            "for every input",
        ),
    ],
)
def test_refusals_name_the_input_and_field(request_: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_infer_request(request_)
    assert e.value.message == message


def test_bf16_is_refused_as_rest_refuses_it() -> None:
    with pytest.raises(BadRequest) as e:
        parse_infer_request(raw_request(("x", "BF16", [1], b"\0\0")))
    assert e.value.message.startswith("input 'x'.datatype: unknown datatype 'BF16', expected")


def test_response_raw_or_typed() -> None:
    outputs = {
        "a": np.array([[1.5, -2.0]], np.float32),
        "s": np.array(["x", "é"], dtype=np.object_),
        "h": np.array([0.5], np.float16),
    }
    raw = build_infer_response("m", "1", "id", outputs, ["s", "a"], raw=True)
    assert [o.name for o in raw.outputs] == ["s", "a"]
    assert raw.raw_output_contents[1] == struct.pack("<2f", 1.5, -2.0)
    assert raw.raw_output_contents[0] == b"\1\0\0\0x\2\0\0\0" + "é".encode()
    typed = build_infer_response("m", "1", "", outputs, ["a", "s"], raw=False)
    assert not typed.raw_output_contents
    assert list(typed.outputs[0].contents.fp32_contents) == [1.5, -2.0]
    assert list(typed.outputs[0].shape) == [1, 2]
    assert list(typed.outputs[1].contents.bytes_contents) == [b"x", "é".encode()]
    # FP16 has no typed field: the whole answer goes raw
    mixed = build_infer_response("m", "1", "", outputs, None, raw=False)
    assert len(mixed.raw_output_contents) == 3
    assert mixed.raw_output_contents[2] == np.array([0.5], "<f2").tobytes()


def test_model_config_uses_tritons_names() -> None:
    config = model_config(
        {
            "name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": 8,
            "input": [{"name": "x", "data_type": "TYPE_BYTES", "dims": [3]}],
            "output": [{"name": "y", "data_type": "TYPE_FP16", "dims": [-1]}],
            "dynamic_batching": {"max_queue_delay_microseconds": 500},
        }
    )  # fmt: skip
    assert config.input[0].data_type == pb.TYPE_STRING
    assert config.output[0].data_type == pb.TYPE_FP16
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_every_http_error_status_has_a_grpc_code() -> None:
    from modelservice_runtime import errors

    statuses = {
        cls.status_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ModelServiceError)
    }
    assert statuses <= set(CODES)
