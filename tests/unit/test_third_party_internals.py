"""Each third-party internal the runtime relies on, checked where it is used (the adapter
modules), so an upgrade that moves one fails here, by name, and not in production."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import numpy as np
import onnx
import pytest
from modelservice_runtime import ort_compat
from modelservice_runtime.transport import uvicorn_compat
from onnx import TensorProto, helper


def _minor(package: str) -> str:
    return ".".join(version(package).split(".")[:2])


def test_onnxruntime_is_a_tested_minor() -> None:
    assert _minor("onnxruntime") in ort_compat.TESTED, (
        f"onnxruntime {version('onnxruntime')} is not among the minors ort_compat was checked "
        f"on {ort_compat.TESTED}: re-check ort_compat.py, then add it there and to pyproject"
    )


def test_onnxruntime_raises_invalid_argument_for_a_refused_input(tmp_path) -> None:
    import onnxruntime as ort

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    refused = ort_compat.invalid_argument()
    assert issubclass(refused, Exception)
    with pytest.raises(refused):
        session.run(None, {"x": np.zeros((2, 3), np.float32)})  # the graph fixes dim 0 at 1


def test_uvicorn_is_a_tested_minor_and_hands_protocols_what_http_protocol_takes() -> None:
    assert _minor("uvicorn") in uvicorn_compat.TESTED, (
        f"uvicorn {version('uvicorn')} is not among the minors uvicorn_compat was checked on "
        f"{uvicorn_compat.TESTED}: re-check transport/http_protocol.py against it"
    )
    state = uvicorn_compat.ServerState()
    for attribute in ("total_requests", "connections", "tasks", "default_headers"):
        assert hasattr(state, attribute), f"uvicorn's ServerState lost {attribute!r}"
    for helper_ in (uvicorn_compat.get_local_addr, uvicorn_compat.get_remote_addr):
        assert list(inspect.signature(helper_).parameters) == ["transport"]
    assert list(inspect.signature(uvicorn_compat.is_ssl).parameters) == ["transport"]
    config = uvicorn_compat.Config(app=lambda scope, receive, send: None)
    for attribute in ("timeout_keep_alive", "root_path", "loaded", "load"):
        assert hasattr(config, attribute), f"uvicorn's Config lost {attribute!r}"
