""" "Is this a model the runtime will load?", asked of a fetched file or set before it is
published, so that a bad model fails the init container, not the runtime after it."""

from __future__ import annotations

from pathlib import Path

from modelservice_runtime import model_files
from modelservice_runtime.errors import first_line
from modelservice_runtime.fetch.base import FetchError
from modelservice_runtime.serving.external_data import ExternalDataError, check_external_data


def verify_onnx(path: Path, show: str) -> None:
    """Fail unless `path` is a loadable ONNX model (onnx.checker if available, else ORT).

    The runtime image has onnxruntime but not onnx, so the fallback is what runs in the
    init container: if onnxruntime can build a session, the runtime will be able to too.
    """
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            onnx.checker.check_model(str(path))
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # the error comes back to us; no C++ log spam
            # Only whether it loads: no optimizing, and external data mapped rather than
            # packed into a copy, so checking a 20 GB model does not need 20 GB of memory.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.add_session_config_entry("session.disable_prepacking", "1")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ImportError as e:
        raise FetchError(
            f"{show}: cannot check the model, neither onnx nor onnxruntime is installed"
        ) from e
    except Exception as e:
        # The checkers name the temp file, which no longer exists when the user reads this.
        detail = first_line(e).replace(str(path), "the downloaded file")
        raise FetchError(f"{show} is not a loadable ONNX model: {detail}") from e


def verify_set(tree: Path, show: str) -> None:
    """Fail unless the directory `tree` holds one ONNX model the runtime will serve, with
    its external data inside the set (the same rules as serving/external_data.py)."""
    try:
        model = model_files.locate(tree)
    except model_files.ModelFileError as e:
        # The message names the temp tree, gone when the user reads it.
        raise FetchError(f"{show}: {str(e).replace(str(tree), 'the set')}") from e
    try:
        # What the runtime will refuse (serving/external_data.py), said at fetch.
        check_external_data(model)
    except ExternalDataError as e:
        raise FetchError(f"{show}: {str(e).replace(str(tree), 'DEST')}") from e
    verify_onnx(model, show)
