"""External data: references that leave the model's directory are refused before
onnxruntime opens anything; a good one loads by path, and loading never copies the
model's bytes into the Python process."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelservice_runtime.serving.external_data import (
    ExternalDataError,
    NotOnnx,
    check_external_data,
    external_refs,
)
from modelservice_runtime.serving.model import ModelLoadError, OnnxModel
from modelservice_runtime.settings import Settings
from onnx import TensorProto, helper, numpy_helper

from tests import extdata


def load(path: Path) -> OnnxModel:
    return OnnxModel(Settings(model_path=path, execution_provider="cpu"))


def test_a_model_with_external_data_loads_by_path_and_answers(tmp_path: Path) -> None:
    path = extdata.save_external(tmp_path / "m")
    refs = check_external_data(path)
    assert sorted((r.tensor, r.location) for r in refs) == [
        ("w1", "data/weights.bin"),
        ("w2", "data/weights.bin"),
    ]
    assert sum(r.length or 0 for r in refs) == (tmp_path / "m/data/weights.bin").stat().st_size
    x = np.random.default_rng(1).standard_normal((3, extdata.IN), dtype=np.float32)
    got = load(path).run({"x": x})["y"]
    np.testing.assert_allclose(got, extdata.expected(x), rtol=1e-4, atol=1e-4)


def test_one_file_per_tensor_and_one_file_models(tmp_path: Path, mlp_onnx: Path) -> None:
    path = extdata.save_external(tmp_path / "m", one_file=False)
    assert sorted(r.location for r in check_external_data(path)) == ["w1", "w2"]
    assert check_external_data(mlp_onnx) == []  # weights inline: nothing to check


@pytest.mark.parametrize(
    ("location", "rule"),
    [
        ("../outside.bin", "outside the model's directory"),
        ("data/../../outside.bin", "outside the model's directory"),
        ("/etc/passwd", "an absolute path"),
        ("missing.bin", "does not exist"),
        ("", "no location given"),
    ],
)
def test_references_outside_the_directory_are_refused_naming_tensor_and_path(
    tmp_path: Path, location: str, rule: str
) -> None:
    path = extdata.save_external(tmp_path / "m")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "m/data/weights.bin").read_bytes())
    extdata.set_location(path, "w2", location)
    with pytest.raises(ModelLoadError) as e:
        load(path)
    message = str(e.value)
    assert f"tensor 'w2': external data {location!r}" in message and rule in message
    assert str(path) in message


def test_a_symlink_escaping_the_directory_is_refused(tmp_path: Path) -> None:
    path = extdata.save_external(tmp_path / "m")
    data = tmp_path / "m/data/weights.bin"
    outside = tmp_path / "elsewhere.bin"
    data.rename(outside)
    data.symlink_to(outside)
    with pytest.raises(ModelLoadError, match=r"tensor 'w1': external data 'data/weights.bin': "
                       r"resolves to .*elsewhere.bin, outside the model's directory"):  # fmt: skip
        load(path)
    # A link that stays inside the directory is only another name for a file there.
    data.unlink()
    outside.rename(tmp_path / "m/real.bin")
    data.symlink_to("../real.bin")
    assert len(check_external_data(path)) == 2


def test_a_reference_past_the_end_of_its_file_is_refused(tmp_path: Path) -> None:
    path = extdata.save_external(tmp_path / "m")
    data = tmp_path / "m/data/weights.bin"
    os.truncate(data, data.stat().st_size - 4)
    with pytest.raises(ModelLoadError, match=r"tensor 'w2'.*runs past the file's"):
        load(path)


def test_references_in_subgraphs_and_attributes_are_found(tmp_path: Path) -> None:
    """A Constant node's tensor attribute inside an If branch is external data too."""
    value = numpy_helper.from_array(np.ones((4,), dtype=np.float32), "c")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["out"], value=value)],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m").mkdir()
    path = tmp_path / "m/model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, size_threshold=0,
                    location="c.bin", convert_attribute=True)  # fmt: skip
    refs = external_refs(path)
    assert {(r.tensor, r.location) for r in refs} == {("c", "c.bin")}
    proto = onnx.load(str(path), load_external_data=False)
    for node in proto.graph.node[0].attribute[0].g.node:
        for entry in node.attribute[0].t.external_data:
            if entry.key == "location":
                entry.value = "../c.bin"
    onnx.save_model(proto, str(path))
    with pytest.raises(ExternalDataError, match=r"tensor 'c': external data '../c.bin'"):
        check_external_data(path)


def test_a_reference_hidden_behind_an_unknown_group_field_is_still_found(tmp_path: Path) -> None:
    """protobuf keeps unknown fields, groups included: the scanner must not stop at one."""
    path = extdata.save_external(tmp_path / "m")
    extdata.set_location(path, "w1", "../x.bin")
    # field 99 as a group (start tag, one varint field inside, end tag), then the model.
    group = bytes([0x9B, 0x06, 0x08, 0x01, 0x9C, 0x06])
    path.write_bytes(group + path.read_bytes())
    with pytest.raises(ExternalDataError, match=r"tensor 'w1': external data '../x.bin'"):
        check_external_data(path)


def test_a_file_that_is_not_protobuf_is_named_as_such(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_text("<html>404</html>")
    with pytest.raises(NotOnnx):
        check_external_data(bad)
    with pytest.raises(ModelLoadError, match=f"cannot load {bad} as an ONNX model"):
        load(bad)


def test_loading_never_copies_the_model_into_python_memory(tmp_path: Path) -> None:
    """tracemalloc sees every Python allocation (bytes objects, numpy buffers), not
    onnxruntime's own: reading the model (for a digest, metadata, a check) would show here."""
    big = numpy_helper.from_array(np.ones((2048, 2048), dtype=np.float32), "w")  # 16 MiB inline
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2048])],
        [big],
    )
    path = tmp_path / "inline.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(path))  # fmt: skip
    ext = extdata.save_external(tmp_path / "ext")
    for model, size in ((path, path.stat().st_size), (ext, 2 << 20)):
        tracemalloc.start()
        try:
            load(model)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < size / 4, f"{model}: Python allocated {peak} bytes for a {size}-byte model"


def test_fetch_refuses_a_set_whose_external_data_escapes(tmp_path: Path) -> None:
    """Said at fetch time too (the init container), before the runtime would refuse it."""
    from modelservice_runtime.fetch import FetchError, fetch_model

    path = extdata.save_external(tmp_path / "src")
    extdata.set_location(path, "w2", "../../etc/passwd")
    with pytest.raises(FetchError) as e:
        fetch_model(str(tmp_path / "src"), tmp_path / "dest", log=lambda _: None)
    assert "tensor 'w2': external data '../../etc/passwd'" in str(e.value)
    assert "outside the model's directory" in str(e.value)
    assert not (tmp_path / "dest").exists()
