"""KServe V1 (TensorFlow-Serving style) predict requests and responses.

`{"instances": [row, ...]}` (or `{"inputs": [row, ...]}`) -> `{"predictions": [row, ...]}`.
A model with one input takes the rows directly; a model with several takes rows that are
objects keyed by input name, or the columnar `{"inputs": {name: rows}}` form.
Rows carry no datatype, so they are read as the model's input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from modelservice_runtime.errors import BadRequest, load_json
from modelservice_runtime.serving.datatypes import json_numbers


def _rows(value: Any, dtype: np.dtype, what: str) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{what} must be a non-empty list of rows")
    try:
        return json_numbers(value, dtype)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadRequest(f"{what} cannot be read as {dtype} rows of equal shape ({e})") from None


def parse_predict_request(
    body: bytes, inputs: Sequence[tuple[str, np.dtype]], doc: Any = None
) -> dict[str, np.ndarray]:
    """Body -> named arrays with the batch (row) axis first.

    `inputs` lists the model's (name, dtype) pairs in order. `doc`: the body already parsed
    as JSON by a caller that had to look inside it first.
    """
    if doc is None:
        doc = load_json(body)
    if not isinstance(doc, dict) or not ("instances" in doc or "inputs" in doc):
        raise BadRequest("request body must be an object with 'instances' (a list of rows)")
    key = "instances" if "instances" in doc else "inputs"
    payload = doc[key]
    names = [name for name, _ in inputs]

    if isinstance(payload, dict):  # columnar: {"inputs": {name: rows}}
        unknown = sorted(set(payload) - set(names))
        if unknown:
            raise BadRequest(f"{key}: unknown input(s) {unknown}; the model takes {names}")
        missing = [n for n in names if n not in payload]
        if missing:
            raise BadRequest(f"{key}: missing input(s) {missing}; the model takes {names}")
        return {n: _rows(payload[n], dt, f"{key}.{n}") for n, dt in inputs}

    if len(inputs) == 1:
        name, dtype = inputs[0]
        if isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
            payload = [r.get(name) if set(r) == {name} else _bad_row(r, names) for r in payload]
        return {name: _rows(payload, dtype, key)}

    if (
        not isinstance(payload, list)
        or not payload
        or not all(isinstance(r, dict) for r in payload)
    ):
        raise BadRequest(
            f"{key}: the model has inputs {names}; expected rows that are objects keyed by "
            'input name, or {"inputs": {name: rows}}'
        )
    for r in payload:
        if set(r) != set(names):
            _bad_row(r, names)
    return {n: _rows([r[n] for r in payload], dt, f"{key}.{n}") for n, dt in inputs}


def _bad_row(row: dict[str, Any], names: list[str]) -> Any:
    if {"name", "shape", "datatype"} <= set(row):  # a V2 tensor under V1's "inputs"
        raise BadRequest(
            f"inputs: {row.get('name')!r} is an Open Inference Protocol (V2) tensor; send V2 "
            'bodies to /v2/models/{model}/infer, or send V1 {"instances": [row, ...]} here'
        )
    raise BadRequest(
        f"instances: instance keys {sorted(row)} do not match the model's inputs {names}; "
        'send {"instances": [row, ...]} (rows of numbers), or rows that are objects keyed '
        "by input name"
    )


def _plain(arr: np.ndarray) -> Any:
    if arr.dtype.kind == "O":
        return [
            x.decode("utf-8", "backslashreplace") if isinstance(x, bytes) else x
            for x in arr.tolist()
        ]
    return arr.tolist()


def build_predict_response(outputs: dict[str, np.ndarray]) -> bytes:
    """One output -> its rows; several -> one object per row keyed by output name."""
    if len(outputs) == 1:
        (arr,) = outputs.values()
        if arr.dtype.kind != "O" and arr.flags.c_contiguous:
            return orjson.dumps({"predictions": arr}, option=orjson.OPT_SERIALIZE_NUMPY)
        return orjson.dumps({"predictions": _plain(arr)})
    columns = {name: _plain(arr) for name, arr in outputs.items()}
    lengths = {len(c) if isinstance(c, list) else -1 for c in columns.values()}
    if len(lengths) != 1 or -1 in lengths:  # no common row axis: answer column-wise
        return orjson.dumps({"predictions": columns})
    rows = lengths.pop()
    return orjson.dumps(
        {"predictions": [{n: col[i] for n, col in columns.items()} for i in range(rows)]}
    )
