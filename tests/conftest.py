"""Shared fixtures: real models exported with torch once per test session. And the end of
every run: what was skipped and why; in CI, any skip but those tests/needs.py allows fails
the run (tests/README.md)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from tests import modelzoo
from tests.needs import CANNOT_HAVE, in_ci, needed_module

# `modelservice serve` listens for gRPC on 8081 by default: the many servers the tests start
# side by side would fight over it. Off unless a test asks for a port (--grpc-port beats it).
os.environ.setdefault("MODELSERVICE_GRPC_PORT", "0")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp_onnx(models_dir: Path) -> Path:
    """MLP, input `input` float32 [batch, 64] -> output `output` float32 [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.mlp(), (1, 64), models_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def cnn_onnx(models_dir: Path) -> Path:
    """CNN, input `input` float32 [batch, 3, 64, 64] -> output `output` float32 [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.cnn(), (1, 3, 64, 64), models_dir / "cnn.onnx")


@pytest.fixture(scope="session")
def encoder_onnx(models_dir: Path) -> Path:
    """Transformer encoder, input `input` float32 [batch, 32, 64] -> `output` [batch, 10]."""
    from modelservice_runtime.tools.export import export_module

    return export_module(modelzoo.encoder(), (1, 32, 64), models_dir / "encoder.onnx")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (marker `soak`, minutes long) run only when asked for: `make soak`
    (`-m soak`), any -m expression naming soak, or MODELSERVICE_SOAK=1. So `make test`
    and a bare `pytest tests` stay bounded without a Makefile change."""
    if os.environ.get("MODELSERVICE_SOAK") == "1" or "soak" in (config.option.markexpr or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipLedger:
    """Every skip of the run (a test, or a file at collection) with its reason."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []  # (node id, reason), in the order they came

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is no left-out part
            self.skips.append((report.nodeid, _skip_reason(report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def not_allowed_in_ci(self) -> list[tuple[str, str]]:
        return [(n, r) for n, r in self.skips if not r.startswith(CANNOT_HAVE)]

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """In CI a skip is a part that did not run: the run fails unless it is one that
        tests/needs.py allows (a GPU, kind)."""
        if in_ci() and self.not_allowed_in_ci() and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The last thing a run prints: what it left out, grouped by reason."""
        if not self.skips:
            return
        by_reason: dict[str, list[str]] = collections.defaultdict(list)
        for nodeid, reason in self.skips:
            by_reason[reason].append(nodeid)
        terminalreporter.section(f"left out: {len(self.skips)} skipped, and why")
        for reason, nodeids in by_reason.items():
            terminalreporter.write_line(f"{len(nodeids)} x {reason}")
            for nodeid in nodeids:
                terminalreporter.write_line(f"    {nodeid}")
        refused = self.not_allowed_in_ci()
        if in_ci() and refused:
            terminalreporter.write_line(
                f"CI=true: {len(refused)} of these are not allowed in CI (only a GPU or kind "
                "may be missing, see tests/README.md): the run fails",
                red=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipLedger(), "modelservice-skip-ledger")


@pytest.fixture(scope="session")
def tiny_llm() -> tuple[Path, Path]:
    """(Hugging Face folder, onnxruntime-genai fp32 folder) of the tiny random Llama made by
    tests/tinyllm.py and exported with `modelservice export-llm`'s builder run, cached under
    .cache/test-models (tinyllm.cached_tiny_llama)."""
    from tests import tinyllm

    needed_module("onnxruntime_genai")
    needed_module("transformers")
    return tinyllm.cached_tiny_llama(Path(__file__).resolve().parents[1] / ".cache" / "test-models")


@pytest.fixture(scope="session")
def wide_llm() -> tuple[Path, Path]:
    """The same as tiny_llm for tests/tinyllm.py's "wide" model: decode steps of a few
    milliseconds instead of a fraction of one."""
    from tests import tinyllm

    needed_module("onnxruntime_genai")
    needed_module("transformers")
    root = Path(__file__).resolve().parents[1] / ".cache" / "test-models"
    return tinyllm.cached_tiny_llama(root, "wide")


@pytest.fixture(scope="session")
def tiny_encoder() -> Path:
    """The folder of the tiny random BERT sentence encoder of tests/tinyencoder.py (ONNX,
    tokenizer.json, sentence-transformers' pooling config). Cached under .cache/test-models
    by a digest of the recipe and the torch version that exported it."""
    import hashlib

    from tests import tinyencoder

    torch = needed_module("torch")
    needed_module("transformers")
    recipe = Path(tinyencoder.__file__).read_bytes() + torch.__version__.encode()
    digest = hashlib.sha256(recipe).hexdigest()[:12]
    root = Path(__file__).resolve().parents[1] / ".cache" / "test-models"
    folder = root / f"tinyencoder-{digest}"
    if not (folder / "modules.json").is_file():
        tmp = root / f"tinyencoder-{digest}.partial-{os.getpid()}"
        tinyencoder.make_tiny_encoder(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another session made it meanwhile
            import shutil

            shutil.rmtree(tmp)
    return folder
