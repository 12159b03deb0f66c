"""Open Inference Protocol (V2) datatypes <-> numpy and ONNX element types.

BYTES is an object array of `str`; on the wire (binary tensor data extension) each element
is a 4-byte little-endian length followed by its bytes, which must be UTF-8: onnxruntime's
Python API carries tensor(string) as text only. It str()s any other object it is fed (the
model would see "b'abc'" for the bytes abc), and it cannot hand out an element that is not
UTF-8 (UnicodeDecodeError), so binary BYTES are decoded here, where a 400 can name the element.
"""

from __future__ import annotations

import array
import struct
import sys
from typing import Any

import numpy as np
from modelservice_runtime.errors import BadRequest

# V2 datatype -> numpy dtype. Binary payloads are little-endian, so fixed-size types pin '<'.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_V2: dict[str, str] = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}

# onnxruntime's type strings ("tensor(float)") -> V2.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

SUPPORTED = ", ".join(V2_TO_NUMPY)


def numpy_dtype(datatype: str, *, what: str = "datatype") -> np.dtype:
    """The numpy dtype for a V2 datatype; 400 naming the supported ones otherwise."""
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        raise BadRequest(
            f"{what}: unknown datatype {datatype!r}, expected one of {SUPPORTED}"
        ) from None


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (object and unicode/bytes strings are BYTES)."""
    if dtype.kind in "OUS":
        return "BYTES"
    key = "b" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}"
    try:
        return _NUMPY_TO_V2[key]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None


# numpy dtype -> the array module's type code of the same layout (little-endian hosts only).
_ARRAY_CODES: dict[np.dtype, str] = {
    np.dtype(f"<{kind}{array.array(code).itemsize}"): code
    for kind, code in (("i", "b"), ("u", "B"), ("i", "h"), ("u", "H"), ("i", "i"), ("u", "I"),
                       ("i", "q"), ("u", "Q"), ("f", "f"), ("f", "d"))
    if sys.byteorder == "little"
}  # fmt: skip


def json_numbers(data: Any, dtype: np.dtype) -> np.ndarray:
    """A JSON list of numbers (flat or nested) as an array of `dtype`.

    numpy alone would read strings too ("NaN", "inf", "5" as numbers, any non-empty string
    as True), but a JSON string is not a number: a numeric tensor refuses them as it refuses
    "x", with ValueError. A flat list of numbers takes the array module's typed conversion,
    which refuses anything else by itself; the rest is scanned for strings first.
    """
    code = _ARRAY_CODES.get(dtype)
    if code is not None and type(data) is list:
        try:
            return np.frombuffer(array.array(code, data), dtype)
        except (TypeError, OverflowError):
            pass  # nested, not all numbers, or out of range: numpy says which below
    if dtype.kind in "biufc":
        found = _first_string(data)
        if found is not None:
            raise ValueError(f"a JSON string is not a number, got {found!r}")
    return np.array(data, dtype=dtype)


def _first_string(data: Any) -> str | None:
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is list:
            stack.extend(reversed(item))
        elif isinstance(item, str):
            return item
    return None


def decode_bytes_tensor(buf: memoryview | bytes, count: int, *, what: str) -> np.ndarray:
    """Parse `count` length-prefixed UTF-8 elements that must fill `buf` exactly, as `str`."""
    mv = memoryview(buf)
    if count * 4 > len(mv):  # checked before allocating: a lying shape must not cost memory
        raise BadRequest(
            f"{what}: shape needs {count} BYTES elements, at least {count * 4} bytes with their "
            f"length prefixes, but binary_data_size is {len(mv)}"
        )
    out = np.empty(count, dtype=np.object_)
    pos, end = 0, len(mv)
    for i in range(count):
        if pos + 4 > end:
            raise BadRequest(
                f"{what}: BYTES element {i} has no 4-byte length prefix; "
                f"expected {count} elements in {end} bytes"
            )
        (n,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if pos + n > end:
            raise BadRequest(
                f"{what}: BYTES element {i} claims {n} bytes but only {end - pos} remain"
            )
        try:
            out[i] = str(mv[pos : pos + n], "utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(
                f"{what}: BYTES element {i} is not UTF-8 ({e.reason} at byte {e.start}); "
                "expected text: the model's tensor(string) carries UTF-8 only"
            ) from None
        pos += n
    if pos != end:
        raise BadRequest(
            f"{what}: {end - pos} bytes left over after {count} BYTES elements; "
            "binary_data_size must match the elements exactly"
        )
    return out


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    """Length-prefix every element (str is UTF-8 encoded)."""
    parts: list[bytes] = []
    for item in arr.reshape(-1):
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)
