"""Hypothesis on the V2 parser: whatever the body, the answer is a parsed request or a
BadRequest (a 400), never another exception (a 500)."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from modelservice_runtime.errors import BadRequest
from modelservice_runtime.serving.datatypes import V2_TO_NUMPY
from modelservice_runtime.serving.protocol import v2

datatypes = st.sampled_from([*V2_TO_NUMPY, "FP8", "", "fp32"])
dims = st.one_of(st.integers(-3, 6), st.integers(-(2**70), 2**70), st.just("2"), st.none())
sizes = st.one_of(st.integers(-5, 80), st.integers(2**40, 2**64), st.just(1.5), st.none())


def _parse(body: bytes, header_length: str | None) -> None:
    """Parsed: every input declared in the header, with its declared shape and datatype.
    Refused: a 400 with a message."""
    try:
        req = v2.parse_infer_request(body, header_length)
    except BadRequest as e:
        assert e.status_code == 400 and str(e), repr(e)
        return
    hlen = len(body) if header_length is None else int(header_length)
    declared = {t["name"]: t for t in orjson.loads(body[:hlen])["inputs"]}
    assert list(req.inputs) == list(declared)
    for name, arr in req.inputs.items():
        assert arr.shape == tuple(declared[name]["shape"]), (name, arr.shape, declared[name])
        assert arr.dtype == V2_TO_NUMPY[declared[name]["datatype"]], (name, arr.dtype)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=256), header_length=st.one_of(st.none(), st.text(max_size=6)))
def test_arbitrary_bytes_never_crash_the_parser(body: bytes, header_length: str | None) -> None:
    _parse(body, header_length)


@settings(max_examples=400, deadline=None)
@given(
    datatype=datatypes,
    shape=st.lists(dims, max_size=4),
    size=sizes,
    payload=st.binary(max_size=96),
    extra_header=st.integers(-3, 3),
)
def test_lying_binary_headers_are_400(
    datatype: str, shape: list[object], size: object, payload: bytes, extra_header: int
) -> None:
    tensor: dict[str, object] = {"name": "x", "datatype": datatype, "shape": shape}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    header = json.dumps({"inputs": [tensor]}).encode()  # stdlib: allows huge ints
    _parse(header + payload, str(len(header) + extra_header))


@settings(max_examples=300, deadline=None)
@given(
    datatype=datatypes,
    shape=st.lists(dims, max_size=3),
    data=st.recursive(
        st.one_of(
            st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3), st.none(), st.booleans()
        ),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=20,
    ),
)
def test_json_data_of_any_shape_is_parsed_or_400(
    datatype: str, shape: list[object], data: object
) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    ).encode()
    _parse(body, None)
