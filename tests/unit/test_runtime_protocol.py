"""Pure protocol code: V2 JSON and binary parsing/building, datatypes, V1."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.serving.datatypes import V2_TO_NUMPY, decode_bytes_tensor, v2_datatype
from modelservice_runtime.serving.protocol import v1, v2

FIXED = [d for d in V2_TO_NUMPY if d != "BYTES"]


def binary_request(tensors: dict[str, np.ndarray], **extra: object) -> tuple[bytes, str]:
    inputs, blobs = [], []
    for name, arr in tensors.items():
        blob = arr.tobytes()
        inputs.append(
            {
                "name": name,
                "datatype": v2_datatype(arr.dtype),
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = orjson.dumps({"inputs": inputs, **extra})
    return header + b"".join(blobs), str(len(header))


@pytest.mark.parametrize("datatype", FIXED)
def test_every_fixed_datatype_round_trips_json_and_binary(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    arr = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    req = v2.parse_infer_request(
        orjson.dumps(
            {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": arr.tolist()}]}
        )
    )
    assert req.inputs["x"].dtype == dtype
    np.testing.assert_array_equal(req.inputs["x"], arr)

    body, hlen = binary_request({"x": arr})
    parsed = v2.parse_infer_request(body, hlen).inputs["x"]
    assert parsed.dtype == dtype and parsed.shape == (2, 3)
    np.testing.assert_array_equal(parsed, arr)

    for binary in (False, True):
        out, out_hlen = v2.build_infer_response("m", "1", {"y": arr}, binary_output=binary)
        head = orjson.loads(out[:out_hlen] if out_hlen else out)
        (tensor,) = head["outputs"]
        assert tensor["datatype"] == datatype and tensor["shape"] == [2, 3]
        if binary:
            got = np.frombuffer(out[out_hlen:], dtype=dtype).reshape(2, 3)
            assert tensor["parameters"]["binary_data_size"] == arr.nbytes
        else:
            got = np.array(tensor["data"], dtype=dtype).reshape(2, 3)
        np.testing.assert_array_equal(got, arr)


def test_binary_inputs_are_views_of_the_body_not_copies() -> None:
    arr = np.arange(8, dtype=np.float32)
    body, hlen = binary_request({"x": arr})
    parsed = v2.parse_infer_request(body, hlen).inputs["x"]
    assert not parsed.flags.owndata and not parsed.flags.writeable


def test_bytes_tensors_json_and_binary() -> None:
    req = v2.parse_infer_request(
        orjson.dumps(
            {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}]}
        )
    )
    assert req.inputs["s"].tolist() == ["ab", "c"]
    blob = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    req = v2.parse_infer_request(header + blob, str(len(header)))
    assert req.inputs["s"].tolist() == ["ab", "c"]  # text, as onnxruntime takes it
    out, hlen = v2.build_infer_response(
        "m", "1", {"s": np.array(["ab", "c"], dtype=object)}, binary_output=True
    )
    assert out[hlen:] == blob
    with pytest.raises(BadRequest, match="claims 9 bytes"):
        decode_bytes_tensor(struct.pack("<I", 9) + b"ab", 1, what="input 's'")


def test_binary_bytes_are_decoded_as_utf8_and_refused_otherwise() -> None:
    blob = b"".join(struct.pack("<I", len(b)) + b for b in (b"h\xc3\xa9", b"", b"\xe6\x97\xa5"))
    got = decode_bytes_tensor(blob, 3, what="input 's'")
    assert got.tolist() == ["hé", "", "日"] and all(type(x) is str for x in got)
    bad = struct.pack("<I", 1) + b"a" + struct.pack("<I", 3) + b"a\xc3("
    with pytest.raises(BadRequest) as e:
        decode_bytes_tensor(bad, 2, what="input 's'")
    assert e.value.message == (
        "input 's': BYTES element 1 is not UTF-8 (invalid continuation byte at byte 1); "
        "expected text: the model's tensor(string) carries UTF-8 only"
    )


def test_requested_outputs_binary_per_output_and_id_echoed() -> None:
    body = orjson.dumps(
        {
            "id": "req-7",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}],
        }
    )
    req = v2.parse_infer_request(body)
    assert req.id == "req-7"
    assert [(o.name, o.binary) for o in req.outputs or []] == [("b", True), ("a", None)]
    outputs = {"a": np.array([1.0], np.float32), "b": np.array([2.0], np.float32)}
    out, hlen = v2.build_infer_response("m", "1", outputs, req.outputs, request_id=req.id)
    assert hlen is not None
    head = orjson.loads(out[:hlen])
    assert head["id"] == "req-7"
    assert [t["name"] for t in head["outputs"]] == ["b", "a"]
    assert head["outputs"][1]["data"] == [1.0]
    assert np.frombuffer(out[hlen:], np.float32).tolist() == [2.0]


def _json_input(**tensor: object) -> bytes:
    base = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}
    base.update(tensor)
    return orjson.dumps({"inputs": [base]})


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "request body is not valid JSON"),
        (b"[1, 2]", None, "request body must be a JSON object"),
        (b"{}", None, "must have 'inputs'"),
        (b'{"inputs": []}', None, "must have 'inputs'"),
        (b'{"inputs": [3]}', None, r"inputs\[0\] must be an object"),
        (_json_input(name=5), None, r"inputs\[0\].name must be a string"),
        (_json_input(datatype="FP8"), None, "unknown datatype 'FP8', expected one of BOOL"),
        (_json_input(shape=[-1]), None, "shape must be a list of non-negative integers"),
        (_json_input(shape="2"), None, "shape must be a list of non-negative integers"),
        (_json_input(shape=[3]), None, r"data has 2 elements but shape \[3\] needs 3"),
        (_json_input(data=["a", "b"]), None, "cannot be read as FP32"),
        (_json_input(data=[[1], [2, 3]]), None, "cannot be read as FP32"),
        (_json_input(data=5), None, "data must be a list"),
        (_json_input(datatype="INT8", data=[1, 300]), None, "cannot be read as INT8"),
        (
            orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}),
            None,
            "neither data nor parameters.binary_data_size",
        ),
        (
            orjson.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2}
            ),
            None,
            "appears more than once",
        ),
        (_json_input(), "abc", "Inference-Header-Content-Length must be an integer"),
        (_json_input(), "100000", "Inference-Header-Content-Length is 100000 but the body"),
        (b"[" * 5000 + b"]" * 5000, None, "not valid JSON"),
        (_json_input(shape=[0, 2**62, 2**62], data=[]), None, "is not a usable tensor shape"),
        (
            orjson.dumps(
                {"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [0], "data": []}]}
            ),
            None,
            "'id' must be a string",
        ),
    ],
)
def test_bad_json_requests_name_the_problem(
    body: bytes, header_length: str | None, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        v2.parse_infer_request(body, header_length)


def _binary(size: object, payload: bytes, shape: list[int] | None = None) -> tuple[bytes, str]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": shape or [2],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + payload, str(len(header))


@pytest.mark.parametrize(
    ("size", "payload", "shape", "message"),
    [
        (8, b"\0" * 5, None, "binary_data_size is 8 bytes but only 5 bytes"),
        (4, b"\0" * 4, None, r"binary_data_size is 4 bytes but shape \[2\] of FP32 needs 8"),
        (8, b"\0" * 12, None, "4 bytes after the last binary input"),
        (-8, b"", None, "binary_data_size must be a non-negative integer"),
        ("8", b"\0" * 8, None, "binary_data_size must be a non-negative integer"),
        (8, b"\0" * 8, [10**12, 10**12], "needs 4000000000000000000000000 bytes"),
    ],
)
def test_lying_or_truncated_binary_payloads_are_refused(
    size: object, payload: bytes, shape: list[int] | None, message: str
) -> None:
    body, hlen = _binary(size, payload, shape)
    with pytest.raises(BadRequest, match=message):
        v2.parse_infer_request(body, hlen)


def test_v1_rows_single_and_multi_input() -> None:
    single = v1.parse_predict_request(
        b'{"instances": [[1, 2], [3, 4]]}', [("x", np.dtype(np.float32))]
    )
    assert single["x"].dtype == np.float32 and single["x"].shape == (2, 2)
    multi = v1.parse_predict_request(
        b'{"instances": [{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3, 4]}]}',
        [("a", np.dtype(np.int64)), ("b", np.dtype(np.float32))],
    )
    assert multi["a"].tolist() == [1, 2] and multi["b"].shape == (2, 2)
    columnar = v1.parse_predict_request(
        b'{"inputs": {"a": [1], "b": [[1, 2]]}}',
        [("a", np.dtype(np.int64)), ("b", np.dtype(np.float32))],
    )
    assert columnar["b"].shape == (1, 2)
    out = orjson.loads(v1.build_predict_response({"y": np.eye(2, dtype=np.float32)}))
    assert out == {"predictions": [[1.0, 0.0], [0.0, 1.0]]}
    two = orjson.loads(
        v1.build_predict_response({"p": np.array([1, 2]), "q": np.array([[0.5], [1.5]])})
    )
    assert two == {"predictions": [{"p": 1, "q": [0.5]}, {"p": 2, "q": [1.5]}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"nope", "not valid JSON"),
        (b'{"rows": []}', "must be an object with 'instances'"),
        (b'{"instances": []}', "must be a non-empty list of rows"),
        (b'{"instances": [[1], [1, 2]]}', "cannot be read as float32 rows of equal shape"),
        (b'{"instances": [{"z": 1}]}', r"instance keys \['z'\] do not match"),
    ],
)
def test_v1_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        v1.parse_predict_request(body, [("x", np.dtype(np.float32))])


@pytest.mark.parametrize("text", ["NaN", "inf", "-Infinity", "5", "x"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT64", "BOOL"])
def test_a_json_string_is_not_a_number(datatype: str, text: str) -> None:
    """numpy reads "NaN", "inf" and "5" as numbers (and any string as True); JSON does not:
    every one gets the 400 that "x" gets."""
    with pytest.raises(BadRequest, match=f"cannot be read as {datatype}"):
        v2.parse_infer_request(_json_input(datatype=datatype, data=[1, text]))
    with pytest.raises(BadRequest, match="cannot be read as"):
        v1.parse_predict_request(
            orjson.dumps({"instances": [[1, text]]}), [("x", V2_TO_NUMPY[datatype])]
        )


def test_numbers_in_nested_lists_and_nulls_read_as_before() -> None:
    got = v2.parse_infer_request(_json_input(shape=[2, 2], data=[[1, 2.5], [3, 4]]))
    np.testing.assert_array_equal(got.inputs["x"], np.array([[1, 2.5], [3, 4]], np.float32))
    got = v2.parse_infer_request(_json_input(data=[1, None]))
    assert np.isnan(got.inputs["x"][1])  # null was read as NaN, and still is
