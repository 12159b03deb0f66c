"""Which ONNX file a model path names: the one rule `serve` and `fetch` both follow.

A large model is a folder (`model.onnx` beside its external data files), so MODEL may be a
directory. Its model is, in this order:

1. `DIR/model.onnx` when that is a file;
2. Triton's layout, `DIR/model.onnx/` a directory: its `model.onnx`, else its only `.onnx`;
3. the only `.onnx` file directly in DIR.

Several candidates and none named model.onnx is ambiguous: refused, naming them, rather
than guessed (a folder holding `model.onnx` and `model-int8.onnx` must not serve whichever
sorts first). onnxruntime is then given the file's path, so external data resolves
relative to that file's folder.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILENAME = "model.onnx"


class ModelFileError(ValueError):
    """No model file can be chosen; the message names the path and what was found."""


def _only_onnx(folder: Path, shown: Path) -> Path:
    found = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelFileError(
            f"{shown}: no model file in the directory: expected {MODEL_FILENAME}, "
            f"{MODEL_FILENAME}/{MODEL_FILENAME} (Triton's layout) or exactly one .onnx file"
        )
    names = ", ".join(p.name for p in found)
    raise ModelFileError(
        f"{shown}: ambiguous: {len(found)} .onnx files ({names}) and none named "
        f"{MODEL_FILENAME}; name the one to serve (e.g. {folder / found[0].name})"
    )


def locate(path: Path) -> Path:
    """The ONNX file to load for `path` (a file, or a directory by the rules above).

    Raises ModelFileError when the path does not exist or the directory is ambiguous.
    """
    if path.is_file():
        return path
    if not path.exists():
        raise ModelFileError(f"{path}: does not exist")
    if not path.is_dir():
        raise ModelFileError(f"{path}: not a file or directory")
    direct = path / MODEL_FILENAME
    if direct.is_file():
        return direct
    if direct.is_dir():
        inner = direct / MODEL_FILENAME
        return inner if inner.is_file() else _only_onnx(direct, direct)
    return _only_onnx(path, path)
