"""ModelInferRequest -> named numpy arrays, and outputs -> ModelInferResponse: pure functions.

The gRPC twin of protocol/v2.py. A tensor travels either typed (`contents`, the repeated
field of its datatype) or raw (`raw_input_contents`, one entry per input in order: the
flat little-endian bytes, BYTES as 4-byte length-prefixed elements, as the REST binary
extension has them). Raw inputs are viewed with `numpy.frombuffer`, never copied. Errors are
BadRequest naming the input and the field, the same words as REST where the rule is the same
(the datatype refusals come from datatypes.py, so BF16 is refused alike).

The answer is raw (`raw_output_contents`) when the request was raw, as Triton always answers
and tritonclient always asks; a typed request gets typed contents back, unless an output has
no typed field (FP16), when the whole answer is raw: the protocol allows one form per answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.serving.datatypes import (
    decode_bytes_tensor,
    encode_bytes_tensor,
    numpy_dtype,
    v2_datatype,
)
from modelservice_runtime.serving.grpc_front import grpc_predict_v2_pb2 as pb

# V2 datatype -> the InferTensorContents field that carries it typed (FP16: none, raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# The numpy type a typed field's values are read as, before the range check to the datatype.
_FIELD_DTYPE: dict[str, Any] = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


@dataclass(slots=True)
class InferRequest:
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every model output
    raw: bool  # the inputs came in raw_input_contents


def parse_infer_request(req: pb.ModelInferRequest) -> InferRequest:
    """The inputs and requested outputs of `req`; BadRequest naming the field otherwise."""
    tensors = req.inputs
    if not tensors:
        raise BadRequest("inputs must be a non-empty list of tensors")
    raws = req.raw_input_contents
    raw = len(raws) > 0
    if raw and len(raws) != len(tensors):
        raise BadRequest(
            f"raw_input_contents has {len(raws)} entries but there are {len(tensors)} inputs; "
            "expected one entry per input, in the order of inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        name = t.name
        if not name:
            raise BadRequest(f"inputs[{i}].name must be a non-empty string")
        what = f"input '{name}'"
        if name in inputs:
            raise BadRequest(f"{what} appears more than once; expected each input once")
        dtype = numpy_dtype(t.datatype, what=f"{what}.datatype")
        shape = tuple(t.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(
                f"{what}.shape must be a list of non-negative integers, got {list(shape)}"
            )
        if raw:
            if t.HasField("contents"):
                raise BadRequest(
                    f"{what} has contents but the request has raw_input_contents; expected "
                    "one form for every input"
                )
            inputs[name] = _raw_tensor(raws[i], t.datatype, dtype, shape, what, i)
        else:
            inputs[name] = _typed_tensor(t.contents, t.datatype, dtype, shape, what)
    outputs = [o.name for o in req.outputs] if len(req.outputs) else None
    if outputs is not None:
        for i, out in enumerate(outputs):
            if not out:
                raise BadRequest(f"outputs[{i}].name must be a non-empty string")
    return InferRequest(inputs, outputs, raw)


def _reshape(arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except ValueError as e:
        raise BadRequest(
            f"{what}: shape {list(shape)} is not a usable tensor shape ({e})"
        ) from None


def _raw_tensor(
    buf: bytes, datatype: str, dtype: np.dtype, shape: tuple[int, ...], what: str, index: int
) -> np.ndarray:
    count = prod(shape)
    if dtype.kind == "O":
        return _reshape(decode_bytes_tensor(buf, count, what=what), shape, what)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise BadRequest(
            f"{what}: raw_input_contents[{index}] is {len(buf)} bytes but shape {list(shape)} "
            f"of {datatype} needs {expected} bytes"
        )
    return _reshape(np.frombuffer(buf, dtype=dtype, count=count), shape, what)


def _typed_tensor(
    contents: pb.InferTensorContents,
    datatype: str,
    dtype: np.dtype,
    shape: tuple[int, ...],
    what: str,
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(
            f"{what}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(contents, field)
    count = prod(shape)
    if len(values) != count:
        others = [f.name for f, v in contents.ListFields() if f.name != field and len(v)]
        hint = f" (it has {', '.join(others)}: the wrong field for {datatype})" if others else ""
        raise BadRequest(
            f"{what}: contents.{field} has {len(values)} values but shape {list(shape)} needs "
            f"{count}{hint}"
        )
    if dtype.kind == "O":
        out = np.empty(count, dtype=np.object_)
        for j, item in enumerate(values):
            try:
                out[j] = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRequest(
                    f"{what}: BYTES element {j} is not UTF-8 ({e.reason} at byte {e.start}); "
                    "expected text: the model's tensor(string) carries UTF-8 only"
                ) from None
        return _reshape(out, shape, what)
    wide = np.array(values, dtype=_FIELD_DTYPE[field])
    if wide.dtype != dtype and dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        low, high = wide.min(), wide.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise BadRequest(
                f"{what}: contents.{field} value {int(bad)} is out of range for {datatype} "
                f"({info.min}..{info.max})"
            )
    return _reshape(wide.astype(dtype, copy=False), shape, what)


def build_infer_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: dict[str, np.ndarray],
    requested: list[str] | None,
    *,
    raw: bool,
) -> pb.ModelInferResponse:
    """The answer holding `requested` (validated by the caller; None: every output)."""
    names = list(outputs) if requested is None else requested
    datatypes = [v2_datatype(outputs[n].dtype) for n in names]
    raw = raw or any(d not in CONTENTS_FIELD for d in datatypes)
    tensors = []
    blobs: list[bytes] = []
    for name, datatype in zip(names, datatypes, strict=True):
        arr = outputs[name]
        tensor = pb.ModelInferResponse.InferOutputTensor(
            name=name, datatype=datatype, shape=arr.shape
        )
        if raw:
            blobs.append(
                encode_bytes_tensor(arr)
                if arr.dtype.kind == "O"
                else np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            )
        else:
            field = getattr(tensor.contents, CONTENTS_FIELD[datatype])
            flat = arr.reshape(-1)
            if arr.dtype.kind == "O":
                field.extend(x if isinstance(x, bytes) else str(x).encode() for x in flat)
            else:
                field.extend(flat.tolist())
        tensors.append(tensor)
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        outputs=tensors,
        raw_output_contents=blobs,
    )
