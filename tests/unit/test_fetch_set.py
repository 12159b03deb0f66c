"""Multi-file models: a directory, .tar.gz and .zip fetched whole; crafted archives refused."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from modelservice_cli import main as cli
from modelservice_runtime.fetch import FetchError, fetch_model
from modelservice_runtime.fetch.base import SetError
from modelservice_runtime.fetch.s3 import plan_prefix, s3_prefix
from modelservice_runtime.fetch.trees import digest_of, set_digest
from onnx import TensorProto, helper, numpy_helper


def make_model_dir(root: Path) -> Path:
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    root.mkdir(parents=True)
    onnx.save_model(
        model,
        str(root / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return root


def test_directory_fetch_matches_digest(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "src")
    digest = set_digest(src)
    result = fetch_model(f"file://{src}/", tmp_path / "dest", digest)
    assert sorted(p.name for p in result.path.iterdir()) == ["model.onnx", "weights.bin"]
    assert set_digest(result.path) == digest
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch_model(str(src), tmp_path / "other", "0" * 64)
    assert not (tmp_path / "other").exists()


def test_digest_command_is_stable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_model_dir(tmp_path / "a")
    assert cli.main(["digest", str(src)]) == 0
    first = capsys.readouterr().out.strip()
    (tmp_path / "b").mkdir()
    for p in src.iterdir():
        (tmp_path / "b" / p.name).write_bytes(p.read_bytes())
    assert cli.main(["digest", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.strip() == first == set_digest(src)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_fetch_replaces_dest(tmp_path: Path, suffix: str) -> None:
    src = make_model_dir(tmp_path / "src")
    archive = tmp_path / f"m{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in src.iterdir():
                zf.write(p, p.name)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for p in src.iterdir():
                tf.add(p, p.name)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale").write_text("old")
    result = fetch_model(str(archive), dest, max_unpacked_bytes=10_000_000)
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "weights.bin"]
    assert set_digest(dest) == set_digest(src)
    assert result.copied


def _tar(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x" * 10) -> Path:
    with tarfile.open(path, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return path


def _file(name: str, size: int = 10) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "rule"),
    [
        (_file("../evil"), "'..' would leave DEST"),
        (_file("/etc/evil"), "absolute paths are refused"),
        (_link("escape", "/etc/passwd", tarfile.SYMTYPE), "links are refused"),
        (_link("hard", "../../x", tarfile.LNKTYPE), "links are refused"),
    ],
)
def test_crafted_tar_refused(tmp_path: Path, member: tarfile.TarInfo, rule: str) -> None:
    archive = _tar(tmp_path / "bad.tar", [member])
    with pytest.raises(FetchError, match=rule) as e:
        fetch_model(str(archive), tmp_path / "dest", check_onnx=False)
    assert member.name in str(e.value)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "evil").exists()


def test_zip_traversal_and_size_limit_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil", b"x")
    with pytest.raises(FetchError, match=r"'\.\./evil'.*'\.\.' would leave DEST"):
        fetch_model(str(bad), tmp_path / "dest", check_onnx=False)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * 1_000_000)
    with pytest.raises(FetchError, match=r"over the limit of .* refused before extracting"):
        fetch_model(str(bomb), tmp_path / "dest", check_onnx=False)
    assert not (tmp_path / "dest").exists()
    assert cli.main(["fetch", str(bomb), str(tmp_path / "dest"), "--no-onnx-check"]) == 1


# --- s3 prefixes: the keys' plan (the fetch itself: tests/integration/test_fetch_uri_forms.py)


def test_prefix_plan_maps_keys_under_dest_and_skips_folder_markers() -> None:
    plan = plan_prefix(
        "m/", [("m/", 0), ("m/model.onnx", 10), ("m/data/", 0), ("m/data/w.bin", 99)]
    )
    assert plan == [("m/model.onnx", "model.onnx", 10), ("m/data/w.bin", "data/w.bin", 99)]
    assert plan_prefix("", [("model.onnx", 1)]) == [("model.onnx", "model.onnx", 1)]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["m/../x"], "s3 key 'm/../x': path '../x': '..' would leave DEST, refused"),
        (["m//etc/x"], "s3 key 'm//etc/x': path '/etc/x': absolute paths are refused"),
        (["m/a\\..\\..\\x"], "'..' would leave DEST"),
        (["m/a/./b", "m/a/b"], "s3 key 'm/a/b': lands on 'a/b' like key 'm/a/./b', refused"),
        (["m/a", "m/a/b"], "s3 key 'm/a/b': needs 'a' as a directory, but key 'm/a' is a file"),
        (["other/x"], "listed outside the prefix 'm/'"),
        (["m/"], "s3 prefix 'm/': no objects under it"),
    ],
)
def test_prefix_plan_refusals_name_the_key(keys: list[str], message: str) -> None:
    with pytest.raises(SetError) as e:
        plan_prefix("m/", [(k, 0 if k.endswith("/") else 1) for k in keys])
    assert message in str(e.value)


def test_s3_prefix_uris() -> None:
    assert s3_prefix("s3://b/models/ext/") == ("b", "models/ext/")
    assert s3_prefix("s3://b/") == ("b", "")
    assert s3_prefix("s3://b/models/ext") is None  # one key
    assert s3_prefix("https://host/dir/") is None


def test_set_digest_is_digest_of_the_files_hashes(tmp_path: Path) -> None:
    src = make_model_dir(tmp_path / "src")
    hashes = [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(src.iterdir())]
    assert digest_of(reversed(hashes)) == digest_of(hashes) == set_digest(src)
