"""Every V2 datatype a model may take, over HTTP: `modelservice serve` on loopback serving
models built here with onnx.helper, called with JSON and binary tensors, by plain HTTP and by
unmodified tritonclient. Expected values come from onnxruntime in-process (the reference),
and the inputs are chosen so a wrong byte order, width or sign shows: negatives, extremes,
int64 beyond 2**53, fp16 fractions, non-ASCII strings.

Also: a BF16 model is refused with a message naming the tensor; a model with several outputs
answers binary for some and JSON for others as asked; BYTES that are not UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper

from tests.integration.runtime_server import Served, serve
from tests.integration.test_faults_runtime import run_failing_serve

OPSET = [helper.make_opsetid("", 17)]

# V2 datatype -> (ONNX element type, numpy dtype, input values [2, 3], what the model does)
TYPES: dict[str, tuple[int, Any, list[Any]]] = {
    "FP16": (
        TensorProto.FLOAT16,
        np.float16,
        [[-1024.0, -1.5, 0.0999755859375], [3.140625, 32000.0, 6.103515625e-05]],
    ),
    "INT8": (TensorProto.INT8, np.int8, [[-128, -100, -7], [0, 42, 120]]),
    "UINT8": (TensorProto.UINT8, np.uint8, [[0, 3, 77], [128, 200, 248]]),
    "INT64": (
        TensorProto.INT64,
        np.int64,
        [[-(2**62), -123456789012, -1], [0, 2**53 + 1, 2**62]],
    ),
    "BOOL": (TensorProto.BOOL, np.bool_, [[True, False, True], [True, True, False]]),
    "BYTES": (
        TensorProto.STRING,
        np.object_,
        [["plain", "héllo wörld", ""], ["日本語", "emoji 🎉", 'comma, "quote"']],
    ),
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8  # onnxruntime 1.x reads IR 8 everywhere
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def typed_model(datatype: str, path: Path) -> Path:
    """x [N, 3] -> y [N, 3]: x + 7 (numbers), not x (BOOL), x itself (BYTES)."""
    elem, np_type, _ = TYPES[datatype]
    inits = []
    if datatype == "BOOL":
        node = helper.make_node("Not", ["x"], ["y"])
    elif datatype == "BYTES":
        node = helper.make_node("Identity", ["x"], ["y"])
    else:
        inits = [helper.make_tensor("c", elem, [], np.array([7], np_type).tobytes(), raw=True)]
        node = helper.make_node("Add", ["x", "c"], ["y"])
    graph = helper.make_graph(
        [node],
        datatype.lower(),
        [helper.make_tensor_value_info("x", elem, ["N", 3])],
        [helper.make_tensor_value_info("y", elem, ["N", 3])],
        initializer=inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def as_bytes(arr: np.ndarray) -> list[bytes]:
    """BYTES elements as bytes, whichever of str/bytes a decoder produced."""
    return [x.encode() if isinstance(x, str) else bytes(x) for x in arr.reshape(-1)]


def assert_same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    assert list(got.shape) == list(want.shape), (got, want)
    if datatype == "BYTES":
        assert as_bytes(got) == as_bytes(want), (got, want)
    else:
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want)


# --- plain HTTP: request bodies and response decoding ----------------------------------------


def bytes_blob(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def parse_bytes_blob(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<I", blob, pos)
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def tensor_blob(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return bytes_blob(as_bytes(arr))
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


def infer_body(
    inputs: dict[str, tuple[str, np.ndarray]],
    *,
    binary_inputs: bool,
    outputs: list[dict[str, Any]] | None = None,
    binary_output: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A V2 infer request; binary tensor data for every input when `binary_inputs`."""
    tensors, blobs = [], []
    for name, (datatype, arr) in inputs.items():
        t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary_inputs:
            blob = tensor_blob(arr, datatype)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            t["data"] = [x.decode() if isinstance(x, bytes) else x for x in arr.reshape(-1)]
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    doc: dict[str, Any] = {"inputs": tensors, "parameters": {"binary_data_output": binary_output}}
    if outputs is not None:
        doc["outputs"] = outputs
    header = orjson.dumps(doc)
    headers = {"Content-Type": "application/json"}
    if blobs:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return header + b"".join(blobs), headers


def decode_response(r: httpx.Response) -> dict[str, tuple[str, np.ndarray, bool]]:
    """name -> (datatype, array, came as binary), in the order the response lists them."""
    assert r.status_code == 200, r.text
    hlen = r.headers.get("inference-header-content-length")
    body = r.content
    head = orjson.loads(body[: int(hlen)] if hlen is not None else body)
    pos = int(hlen) if hlen is not None else len(body)
    out: dict[str, tuple[str, np.ndarray, bool]] = {}
    for t in head["outputs"]:
        datatype, shape = t["datatype"], t["shape"]
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            blob = body[pos : pos + size]
            pos += size
            if datatype == "BYTES":
                arr = np.array(parse_bytes_blob(blob), dtype=np.object_).reshape(shape)
            else:
                dtype = np.dtype(TYPES[datatype][1] if datatype in TYPES else np.float32)
                arr = np.frombuffer(blob, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
            out[t["name"]] = (datatype, arr, True)
        else:
            assert "data" in t, t
            dtype = np.dtype(TYPES[datatype][1] if datatype in TYPES else np.float32)
            arr = np.array(t["data"], dtype=dtype).reshape(shape)
            out[t["name"]] = (datatype, arr, False)
    assert pos == len(body), f"{len(body) - pos} bytes after the last binary output"
    return out


# --- one server per datatype -----------------------------------------------------------------


@pytest.fixture(scope="module", params=list(TYPES))
def typed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Served]]:
    datatype: str = request.param
    path = typed_model(datatype, tmp_path_factory.mktemp("typed") / f"{datatype.lower()}.onnx")
    with serve(path) as served:
        yield datatype, path, served


def typed_input(datatype: str) -> np.ndarray:
    _, np_type, values = TYPES[datatype]
    return np.array(values, dtype=np_type)


def test_metadata_names_the_datatype(typed: tuple[str, Path, Served]) -> None:
    datatype, path, served = typed
    r = httpx.get(f"{served.url}/v2/models/{path.stem}", timeout=10)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "y", "datatype": datatype, "shape": [-1, 3]}]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (False, True), (True, False)],
    ids=["json", "binary", "json-in-binary-out", "binary-in-json-out"],
)
def test_plain_http_round_trip(
    typed: tuple[str, Path, Served],
    binary_in: bool,
    binary_out: bool,
) -> None:
    datatype, path, served = typed
    x = typed_input(datatype)
    want = reference(path, {"x": x})["y"]
    body, headers = infer_body(
        {"x": (datatype, x)}, binary_inputs=binary_in, binary_output=binary_out
    )
    r = httpx.post(f"{served.url}/v2/models/{path.stem}/infer", content=body, headers=headers)
    (got_type, got, came_binary) = decode_response(r)["y"]
    assert got_type == datatype
    assert came_binary is binary_out
    assert_same(got, want, datatype)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_round_trip(typed: tuple[str, Path, Served], binary: bool) -> None:
    datatype, path, served = typed
    x = typed_input(datatype)
    want = reference(path, {"x": x})["y"]
    client = triton.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        inp = triton.InferInput("x", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        out = triton.InferRequestedOutput("y", binary_data=binary)
        result = client.infer(path.stem, [inp], outputs=[out])
        assert result.get_output("y")["datatype"] == datatype
        assert_same(result.as_numpy("y"), want, datatype)
    finally:
        client.close()


def test_wrong_datatype_is_refused_naming_the_input(typed: tuple[str, Path, Served]) -> None:
    datatype, path, served = typed
    other = "FP32" if datatype != "FP32" else "INT32"
    body = {"inputs": [{"name": "x", "datatype": other, "shape": [1, 3], "data": [1, 2, 3]}]}
    r = httpx.post(f"{served.url}/v2/models/{path.stem}/infer", json=body)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": f"input 'x': datatype {other} does not match; the model expects {datatype}"
    }


# --- BYTES carrying binary (binary input, and not UTF-8) -------------------------------------


@pytest.fixture(scope="module")
def bytes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served]]:
    path = typed_model("BYTES", tmp_path_factory.mktemp("bytes") / "bytes.onnx")
    with serve(path) as served:
        yield path, served


@pytest.mark.parametrize("binary_out", [False, True], ids=["json-out", "binary-out"])
def test_bytes_binary_input_reaches_the_model_as_its_bytes(
    bytes_server: tuple[Path, Served], binary_out: bool
) -> None:
    """Binary BYTES are the model's text, not the repr of Python bytes ("b'abc'", as
    onnxruntime made of them when they were fed as bytes objects)."""
    _, served = bytes_server
    x = np.array([["abc", "héllo", ""]], dtype=np.object_)
    body, headers = infer_body({"x": ("BYTES", x)}, binary_inputs=True, binary_output=binary_out)
    r = httpx.post(f"{served.url}/v2/models/bytes/infer", content=body, headers=headers)
    _, got, came_binary = decode_response(r)["y"]
    assert came_binary is binary_out
    assert as_bytes(got) == [b"abc", "héllo".encode(), b""]
    if not binary_out:
        assert orjson.loads(r.content)["outputs"][0]["data"] == ["abc", "héllo", ""]


def test_bytes_binary_input_not_utf8_is_a_400_naming_the_element(
    bytes_server: tuple[Path, Served],
) -> None:
    """onnxruntime's tensor(string) is text: BYTES that are not UTF-8 cannot reach the model
    (fed as text they would not round-trip, see the two tests below), so they are refused,
    naming the input, the element and the byte."""
    _, served = bytes_server
    raw = [b"plain", b"\x80ok", b"\xc3\x28", b"", b"z", "é".encode("latin-1")]
    x = np.array(raw, dtype=np.object_).reshape(2, 3)
    body, headers = infer_body({"x": ("BYTES", x)}, binary_inputs=True, binary_output=True)
    r = httpx.post(f"{served.url}/v2/models/bytes/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "input 'x': BYTES element 1 is not UTF-8 (invalid start byte at byte 0); "
        "expected text: the model's tensor(string) carries UTF-8 only"
    }
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200


def test_bytes_output_not_utf8_at_inference_is_a_500_naming_it(tmp_path: Path) -> None:
    """A model that picks a string from a table holding one element that is not UTF-8: the
    warm-up picks the good one, so it loads; a request picking the bad one gets a 500 that
    says why (onnxruntime cannot hand it out), and the server goes on serving."""
    table = helper.make_tensor("table", TensorProto.STRING, [2], [b"ok", b"\xff\x00z"])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "pick",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
        initializer=[table],
    )
    path = _save(helper.make_model(graph, opset_imports=OPSET), tmp_path / "pick.onnx")
    with serve(path) as served:
        url = f"{served.url}/v2/models/pick/infer"
        body = {"inputs": [{"name": "i", "datatype": "INT64", "shape": [2], "data": [0, 0]}]}
        r = httpx.post(url, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == ["ok", "ok"]
        body["inputs"][0]["data"] = [0, 1]
        r = httpx.post(url, json=body)
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error.startswith(
            "inference failed: the model produced a tensor(string) element that is not UTF-8, "
            "which onnxruntime cannot hand out ("
        ), error
        assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
        assert "Traceback" not in served.log_tail()


def test_bytes_output_not_utf8_is_a_clear_failure_at_load(tmp_path: Path) -> None:
    """A model whose string output is not UTF-8 (a constant here): onnxruntime's Python API
    cannot hand such a string out, so the warm-up fails and serve says so, never ready."""
    const = helper.make_tensor("k", TensorProto.STRING, [2], [b"\xff\x00z", b"ok"])
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["n"]),
            helper.make_node("Constant", [], ["y"], value=const),
        ],
        "const_bytes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [
            helper.make_tensor_value_info("y", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
    )
    path = _save(helper.make_model(graph, opset_imports=OPSET), tmp_path / "const_bytes.onnx")
    code, out, ready = run_failing_serve(str(path))
    assert code != 0 and ready == 0, out
    assert "warm-up" in out and "utf-8" in out.lower(), out
    assert "Traceback" not in out, out


# --- BF16 ------------------------------------------------------------------------------------


def test_bf16_model_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 3])],
    )
    path = _save(helper.make_model(graph, opset_imports=OPSET), tmp_path / "bf16.onnx")
    code, out, ready = run_failing_serve(str(path))
    assert code != 0 and ready == 0, out
    assert "tensor 'x' has type tensor(bfloat16), which V2 cannot carry" in out, out
    assert "Traceback" not in out, out


def test_bf16_request_datatype_is_refused_naming_the_field(
    typed: tuple[str, Path, Served],
) -> None:
    _, path, served = typed
    body = {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1, 3], "data": [1, 2, 3]}]}
    r = httpx.post(f"{served.url}/v2/models/{path.stem}/infer", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("input 'x'.datatype: unknown datatype 'BF16', expected one of "), error


# --- several outputs, binary for some and JSON for others ------------------------------------


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served]]:
    """x FP32 [N, 3] -> shifted FP32 (x + 0.25), rounded INT64, positive BOOL, text BYTES."""
    quarter = helper.make_tensor("q", TensorProto.FLOAT, [], [0.25])
    zero = helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "q"], ["shifted"]),
            helper.make_node("Round", ["x"], ["r"]),
            helper.make_node("Cast", ["r"], ["rounded"], to=TensorProto.INT64),
            helper.make_node("Greater", ["x", "z"], ["positive"]),
            helper.make_node("Cast", ["x"], ["text"], to=TensorProto.STRING),
        ],
        "multi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [
            helper.make_tensor_value_info("shifted", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("rounded", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["N", 3]),
            helper.make_tensor_value_info("text", TensorProto.STRING, ["N", 3]),
        ],
        initializer=[quarter, zero],
    )
    path = _save(
        helper.make_model(graph, opset_imports=OPSET), tmp_path_factory.mktemp("m") / "multi.onnx"
    )
    with serve(path) as served:
        yield path, served


MULTI_X = np.array([[-2.75, 0.5, 3.25], [1e6, -0.125, 7.0]], dtype=np.float32)


def test_several_outputs_binary_for_some_json_for_others(multi: tuple[Path, Served]) -> None:
    path, served = multi
    want = reference(path, {"x": MULTI_X})
    np.testing.assert_array_equal(want["rounded"], [[-3, 0, 3], [1000000, 0, 7]])
    asked = [
        {"name": "text", "parameters": {"binary_data": True}},
        {"name": "shifted"},  # request-level default: JSON
        {"name": "positive", "parameters": {"binary_data": True}},
        {"name": "rounded", "parameters": {"binary_data": False}},
    ]
    body, headers = infer_body({"x": ("FP32", MULTI_X)}, binary_inputs=True, outputs=asked)
    r = httpx.post(f"{served.url}/v2/models/multi/infer", content=body, headers=headers)
    got = decode_response(r)
    assert list(got) == ["text", "shifted", "positive", "rounded"], "in the order asked"
    assert {n: (t, b) for n, (t, _, b) in got.items()} == {
        "text": ("BYTES", True),
        "shifted": ("FP32", False),
        "positive": ("BOOL", True),
        "rounded": ("INT64", False),
    }
    for name in ("shifted", "positive", "rounded", "text"):
        assert_same(got[name][1], want[name], "BYTES" if name == "text" else "")


def test_several_outputs_subset_with_tritonclient(multi: tuple[Path, Served]) -> None:
    path, served = multi
    want = reference(path, {"x": MULTI_X})
    client = triton.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        inp = triton.InferInput("x", list(MULTI_X.shape), "FP32")
        inp.set_data_from_numpy(MULTI_X, binary_data=False)
        outs = [
            triton.InferRequestedOutput("rounded", binary_data=True),
            triton.InferRequestedOutput("text", binary_data=False),
        ]
        result = client.infer("multi", [inp], outputs=outs)
        response = result.get_response()
        assert [o["name"] for o in response["outputs"]] == ["rounded", "text"]
        assert "binary_data_size" in response["outputs"][0]["parameters"]
        assert "data" in response["outputs"][1]
        assert_same(result.as_numpy("rounded"), want["rounded"], "INT64")
        assert_same(result.as_numpy("text"), want["text"], "BYTES")
        assert result.as_numpy("shifted") is None, "not asked for, not sent"
    finally:
        client.close()
