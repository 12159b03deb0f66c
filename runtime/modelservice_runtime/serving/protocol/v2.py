"""Open Inference Protocol (KServe V2) infer requests and responses, JSON and binary.

Pure functions, no HTTP framework: `parse_infer_request` turns a body (and the value of
the Inference-Header-Content-Length header, if any) into named numpy arrays and the
requested outputs; `build_infer_response` does the reverse. Binary tensor data is viewed
with `numpy.frombuffer`, never copied (unless misaligned for its dtype).

Binary tensor data extension, in short: the body is a JSON header of
Inference-Header-Content-Length bytes followed by the raw tensors, in the order of the
inputs that carry `parameters.binary_data_size`. Responses do the same for outputs asked
for with `parameters.binary_data` (or the request-level `binary_data_output`).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import orjson
from modelservice_runtime.errors import BadRequest, load_json
from modelservice_runtime.serving.datatypes import (
    decode_bytes_tensor,
    encode_bytes_tensor,
    json_numbers,
    numpy_dtype,
    v2_datatype,
)

HEADER_LENGTH = "inference-header-content-length"
_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request-level binary_data_output


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None  # None: every model output
    id: str | None = None
    binary_output: bool = False  # request-level parameters.binary_data_output


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{what}.parameters must be an object, got {type(params).__name__}")
    return params


def _shape(value: Any, what: str) -> tuple[int, ...]:
    ok = type(value) is list
    if ok:
        for d in value:  # a plain loop: this runs for every input of every request
            if type(d) is not int or d < 0:  # bool is not a dimension
                ok = False
                break
    if not ok:
        raise BadRequest(f"{what}.shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _reshape(arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except ValueError as e:  # e.g. [0, 2**70]: no elements, but no such numpy shape either
        raise BadRequest(
            f"{what}: shape {list(shape)} is not a usable tensor shape ({e})"
        ) from None


def _json_tensor(data: Any, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"{what}.data must be a list of values, got {type(data).__name__}")
    try:
        arr = json_numbers(data, dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadRequest(
            f"{what}.data cannot be read as {v2_datatype(dtype)} ({e}); "
            "expected a flat or nested list of numbers of that datatype"
        ) from None
    count = prod(shape)
    if arr.size != count:
        raise BadRequest(
            f"{what}: data has {arr.size} elements but shape {list(shape)} needs {count}"
        )
    if dtype.kind == "O":
        # Strings travel as str in JSON; onnxruntime takes str elements for tensor(string).
        arr = np.array(
            [x if isinstance(x, str | bytes) else str(x) for x in arr.reshape(-1)], dtype=np.object_
        )
    return _reshape(arr, shape, what)


def _binary_tensor(
    body: bytes, offset: int, size: Any, dtype: np.dtype, shape: tuple[int, ...], what: str
) -> np.ndarray:
    if type(size) is not int or size < 0:
        raise BadRequest(f"{what}.parameters.binary_data_size must be a non-negative integer")
    if offset + size > len(body):
        raise BadRequest(
            f"{what}: binary_data_size is {size} bytes but only {len(body) - offset} bytes "
            "of binary data remain in the body (truncated payload?)"
        )
    count = prod(shape)
    if dtype.kind == "O":
        flat = decode_bytes_tensor(memoryview(body)[offset : offset + size], count, what=what)
        return _reshape(flat, shape, what)
    expected = count * dtype.itemsize
    if size != expected:
        raise BadRequest(
            f"{what}: binary_data_size is {size} bytes but shape {list(shape)} of "
            f"{v2_datatype(dtype)} needs {expected} bytes"
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if offset % dtype.itemsize:
        arr = arr.copy()  # misaligned for its dtype: one copy beats slow kernels
    return _reshape(arr, shape, what)


def parse_infer_request(
    body: bytes, header_length: str | None = None, doc: Any = None
) -> InferRequest:
    """Parse a V2 infer request body; 400 (BadRequest) naming the field on any mismatch.

    `doc`: the body already parsed as JSON by a caller that had to look inside it first
    (a JSON body only: binary tensor data needs `header_length`)."""
    if doc is not None:
        return _infer_request(doc, body, len(body))
    hlen = len(body)
    if header_length is not None:
        try:
            hlen = int(header_length)
        except ValueError:
            raise BadRequest(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 <= hlen <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {hlen} but the body has {len(body)} bytes"
            )
    doc = load_json(memoryview(body)[:hlen] if hlen != len(body) else body, "request body")
    return _infer_request(doc, body, hlen)


def _infer_request(doc: Any, body: bytes, hlen: int) -> InferRequest:
    """The request in `doc`, the JSON header; binary tensor data follows it from `hlen`."""
    if not isinstance(doc, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(doc).__name__}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request body must have 'inputs': a non-empty list of tensors")

    inputs: dict[str, np.ndarray] = {}
    offset = hlen
    for i, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{i}].name must be a string")
        what = f"input '{name}'"
        if name in inputs:
            raise BadRequest(f"{what} appears more than once; expected each input once")
        dtype = numpy_dtype(tensor.get("datatype"), what=f"{what}.datatype")
        shape = _shape(tensor.get("shape"), what)
        size = _parameters(tensor, what).get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise BadRequest(f"{what} has both data and binary_data_size; expected one")
            inputs[name] = _binary_tensor(body, offset, size, dtype, shape, what)
            offset += size
        elif "data" in tensor:
            inputs[name] = _json_tensor(tensor["data"], dtype, shape, what)
        else:
            raise BadRequest(f"{what} has neither data nor parameters.binary_data_size")
    if offset != len(body):
        raise BadRequest(
            f"body has {len(body) - offset} bytes after the last binary input; expected "
            "binary_data_size of the inputs to add up to the binary part exactly"
        )

    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise BadRequest("'outputs' must be a list of {name, parameters} objects")
        outputs = []
        for i, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest(f"outputs[{i}] must be an object with a string name")
            binary = _parameters(out, f"outputs[{i}]").get("binary_data")
            outputs.append(RequestedOutput(out["name"], None if binary is None else bool(binary)))

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {type(request_id).__name__}")
    binary_output = bool(_parameters(doc, "request").get("binary_data_output", False))
    return InferRequest(inputs, outputs, request_id, binary_output)


def _json_data(arr: np.ndarray) -> Any:
    flat = arr.reshape(-1)
    if arr.dtype.kind == "O":
        return [
            x.decode("utf-8", "backslashreplace") if isinstance(x, bytes) else str(x) for x in flat
        ]
    return np.ascontiguousarray(flat)  # orjson writes contiguous numpy arrays natively


def build_infer_response(
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput] | None = None,
    *,
    request_id: str | None = None,
    binary_output: bool = False,
) -> tuple[bytes, int | None]:
    """Serialize outputs; returns (body, Inference-Header-Content-Length or None).

    `requested` must name existing outputs (the caller validates against the model).
    """
    chosen = (
        [(name, binary_output) for name in outputs]
        if requested is None
        else [(r.name, binary_output if r.binary is None else r.binary) for r in requested]
    )
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        arr = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(arr.dtype),
            "shape": list(arr.shape),
        }
        if binary:
            blob = (
                encode_bytes_tensor(arr)
                if arr.dtype.kind == "O"
                else np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr)
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    header = orjson.dumps(doc, option=_NUMPY_OPT)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
