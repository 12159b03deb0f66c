"""Refuse a model whose external data points outside its directory, before onnxruntime
opens anything.

A tensor stored outside the `.onnx` file names its file in `external_data` (`location`,
`offset`, `length`), relative to the model's directory. onnxruntime opens whatever that
resolves to, so a model from an untrusted source could read `../../etc/shadow` or
`/proc/self/environ` into a tensor, and an inference would echo it back. Every reference is
checked here first: the location must be relative, must resolve (symlinks followed) inside
the model's directory, must be a regular file and must hold offset + length bytes.

The `.onnx` file is scanned, not parsed: protobuf's wire format is walked field by field and
every field that cannot hold a tensor (raw weights above all) is skipped with a seek, so a
2 GiB model with inline weights costs a few reads, and this process never holds the
model's bytes (onnxruntime reads them itself, from the path). The runtime image carries
onnxruntime but not the onnx package; this needs neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Field numbers from onnx.proto (the ones that can lead to a TensorProto).
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_INIT, _TRAINING_ALGORITHM = 1, 2
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_SMALL = 1 << 16  # a tensor name or an external_data entry larger than this is not one

_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = 0, 1, 2, 3, 4, 5


class ExternalDataError(ValueError):
    """The model cannot be loaded safely; the message names the tensor and the path."""


class NotOnnx(ExternalDataError):
    """The file is not the protobuf an ONNX model is (so onnxruntime could not load it)."""


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str
    offset: int
    length: int | None


class _Reader:
    """Wire-format fields of one message, a byte range [start, end) of a seekable file."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size

    def _varint(self, end: int) -> int:
        result, shift = 0, 0
        while True:
            if self.f.tell() >= end:
                raise ExternalDataError("truncated varint")
            byte = self.f.read(1)
            if not byte:
                raise ExternalDataError("unexpected end of file")
            result |= (byte[0] & 0x7F) << shift
            if not byte[0] & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ExternalDataError("varint longer than 10 bytes")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value or payload start, payload end) per field; the
        caller may read a length-delimited payload, the reader then seeks past it."""
        pos = start
        while pos < end:
            self.f.seek(pos)
            tag = self._varint(end)
            number, wire = tag >> 3, tag & 7
            if wire == _VARINT:
                value = self._varint(end)
                pos = self.f.tell()
                yield number, wire, value, pos
            elif wire == _LEN:
                length = self._varint(end)
                payload = self.f.tell()
                pos = payload + length
                if pos > end:
                    raise ExternalDataError("a field runs past the end of its message")
                yield number, wire, payload, pos
            elif wire in (_I64, _I32):
                pos = self.f.tell() + (8 if wire == _I64 else 4)
                yield number, wire, 0, pos
            elif wire == _START_GROUP:
                # Not in onnx.proto, but protobuf keeps unknown groups: a crafted file must
                # not hide a tensor behind one, so skip it exactly as protobuf would.
                pos = self._skip_group(number, end)
            else:
                raise ExternalDataError(f"unexpected protobuf wire type {wire}")
            if pos > end:
                raise ExternalDataError("a field runs past the end of its message")

    def _skip_group(self, number: int, end: int) -> int:
        while True:
            tag = self._varint(end)
            inner, wire = tag >> 3, tag & 7
            if wire == _END_GROUP:
                if inner != number:
                    raise ExternalDataError("mismatched protobuf group")
                return self.f.tell()
            if wire == _VARINT:
                self._varint(end)
            elif wire == _LEN:
                self.f.seek(self.f.tell() + self._varint(end))
            elif wire in (_I64, _I32):
                self.f.seek(self.f.tell() + (8 if wire == _I64 else 4))
            elif wire == _START_GROUP:
                self.f.seek(self._skip_group(inner, end))
            else:
                raise ExternalDataError(f"unexpected protobuf wire type {wire}")
            if self.f.tell() > end:
                raise ExternalDataError("a group runs past the end of its message")

    def text(self, start: int, end: int) -> str:
        if end - start > _SMALL:
            raise ExternalDataError(f"a {end - start}-byte string where a name was expected")
        self.f.seek(start)
        return self.f.read(end - start).decode("utf-8", errors="replace")


def _walk(r: _Reader, kind: str, start: int, end: int) -> Iterator[ExternalRef]:
    children = {
        "model": {
            _MODEL_GRAPH: "graph",
            _MODEL_TRAINING_INFO: "training",
            _MODEL_FUNCTIONS: "function",
        },
        "training": {_TRAINING_INIT: "graph", _TRAINING_ALGORITHM: "graph"},
        "function": {_FUNCTION_NODE: "node"},
        "graph": {
            _GRAPH_NODE: "node",
            _GRAPH_INITIALIZER: "tensor",
            _GRAPH_SPARSE_INITIALIZER: "sparse",
        },
        "node": {_NODE_ATTRIBUTE: "attribute"},
        "attribute": {
            _ATTR_T: "tensor",
            _ATTR_TENSORS: "tensor",
            _ATTR_G: "graph",
            _ATTR_GRAPHS: "graph",
            _ATTR_SPARSE: "sparse",
            _ATTR_SPARSES: "sparse",
        },
        "sparse": {_SPARSE_VALUES: "tensor", _SPARSE_INDICES: "tensor"},
    }[kind]
    for number, wire, a, b in list(r.fields(start, end)):
        child = children.get(number)
        if child is None or wire != _LEN:
            continue
        if child == "tensor":
            ref = _tensor(r, a, b)
            if ref is not None:
                yield ref
        else:
            yield from _walk(r, child, a, b)


def _tensor(r: _Reader, start: int, end: int) -> ExternalRef | None:
    name, location_kind = "", 0
    entries: dict[str, str] = {}
    for number, wire, a, b in list(r.fields(start, end)):
        if number == _TENSOR_NAME and wire == _LEN:
            name = r.text(a, b)
        elif number == _TENSOR_DATA_LOCATION and wire == _VARINT:
            location_kind = a
        elif number == _TENSOR_EXTERNAL_DATA and wire == _LEN:
            key = value = ""
            for n, w, c, d in list(r.fields(a, b)):
                if w == _LEN and n == _ENTRY_KEY:
                    key = r.text(c, d)
                elif w == _LEN and n == _ENTRY_VALUE:
                    value = r.text(c, d)
            entries[key] = value
    if location_kind != _EXTERNAL:
        return None  # onnxruntime reads external_data only for DataLocation EXTERNAL
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError as e:
        raise ExternalDataError(
            f"tensor {name!r}: external data offset/length must be integers, got "
            f"offset={entries.get('offset')!r} length={entries.get('length')!r}"
        ) from e
    return ExternalRef(name, entries.get("location", ""), offset, length)


def external_refs(model: Path) -> list[ExternalRef]:
    """Every external-data reference in the model file (tensors in subgraphs included)."""
    with open(model, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        r = _Reader(f, size)
        try:
            return list(_walk(r, "model", 0, size))
        except NotOnnx:
            raise
        except ExternalDataError as e:
            if e.args and str(e.args[0]).startswith("tensor "):
                raise ExternalDataError(f"model {model}: {e}") from e
            raise NotOnnx(f"not protobuf: {e}") from e


def check_external_data(model: Path) -> list[ExternalRef]:
    """Raise ExternalDataError unless every reference stays inside the model's directory
    and names bytes that exist; return the references (empty for a one-file model)."""
    refs = external_refs(model)
    base = model.parent.resolve()
    for ref in refs:
        where = f"model {model}: tensor {ref.tensor!r}: external data {ref.location!r}"
        loc = ref.location
        if not loc:
            raise ExternalDataError(f"{where}: no location given")
        if loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") or "\0" in loc:
            raise ExternalDataError(
                f"{where}: an absolute path; expected a path relative to {model.parent}, refused"
            )
        target = (model.parent / loc).resolve()
        if not target.is_relative_to(base):
            raise ExternalDataError(
                f"{where}: resolves to {target}, outside the model's directory {base}, refused"
            )
        if not target.is_file():
            missing = "does not exist" if not target.exists() else "is not a regular file"
            raise ExternalDataError(f"{where}: {target} {missing}")
        need = ref.offset + (ref.length or 0)
        have = target.stat().st_size
        if ref.offset < 0 or (ref.length is not None and ref.length < 0) or need > have:
            raise ExternalDataError(
                f"{where}: offset {ref.offset} + length {ref.length} runs past the file's "
                f"{have} bytes"
            )
    return refs
