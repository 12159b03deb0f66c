"""The packages' imports, read from their source: no circles, and serving/ a straight stack.

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import that
works around a circle is still a circle (issue 29). serving/'s layers run from the app at
the top to the reply types at the bottom; a module imports only from layers below its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "modelservice_cli": ROOT / "cli",
    "modelservice_runtime": ROOT / "runtime",
    "modelservice_operator": ROOT / "operator",
}
SERVING = "modelservice_runtime.serving"
# Top to bottom. A new serving/ module gets its place here, with the reason for it.
SERVING_LAYERS: list[set[str]] = [
    {"app"},
    # the HTTP route table; the gRPC server (grpc_front/server.py), the other front end's top
    {"routes", "grpc_front.server"},
    # one front end's protocols; the gRPC servicer (grpc_front/service.py)
    {
        "endpoints",
        "explain_endpoints",
        "openai_endpoints",
        "embeddings_endpoints",
        "grpc_front.service",
    },
    {"dataplane"},
    {"explaining"},
    {"entries"},
    {"embedding"},  # an encoder folder: over its OnnxModel
    {"model", "generation", "batching", "auth"},
    # the wire formats; grpc_front's tensors.py and the generated service stubs
    {
        "metrics",
        "protocol",
        "protocol.v1",
        "protocol.v2",
        "protocol.openai",
        "protocol.embeddings",
        "external_data",
        "grpc_front.tensors",
        "grpc_front.grpc_predict_v2_pb2_grpc",
    },
    # the generated messages (grpc_front/grpc_predict_v2_pb2.py), the package docs
    {"datatypes", "reply", "protocol.tools", "grpc_front", "grpc_front.grpc_predict_v2_pb2"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, base in PACKAGES.items():
        for path in sorted((base / package).rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (a name may be a module's attribute)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_packages() -> None:
    # A reader that found nothing would pass every check below.
    assert len(MODULES) > 50
    assert f"{SERVING}.dataplane" in GRAPH[f"{SERVING}.routes"]


def test_no_import_cycles() -> None:
    assert _cycles() == []


def _layer(module: str) -> int:
    short = module.removeprefix(SERVING + ".")
    for i, layer in enumerate(SERVING_LAYERS):
        if short in layer:
            return i
    pytest.fail(f"{module} has no layer: add it to SERVING_LAYERS in {Path(__file__).name}")


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith(SERVING + ".") and m != SERVING)
)
def test_serving_imports_only_downwards(module: str) -> None:
    mine = _layer(module)
    upward = [
        t
        for t in sorted(GRAPH[module])
        if t.startswith(SERVING + ".") and t != SERVING and _layer(t) <= mine
    ]
    assert upward == [], f"{module} (layer {mine}) imports at or above its layer: {upward}"


# --- sizes a newcomer can read (issue 29) ---------------------------------------------------

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
# A function over MAX_FUNCTION_LINES is allowed only here, with the reason it stays whole.
LONG_FUNCTIONS: dict[str, str] = {}


def _generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))


def test_no_module_is_over_600_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if not _generated(path) and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {long}"


def test_no_function_is_over_80_lines_without_a_reason() -> None:
    long = {}
    for name, path in MODULES.items():
        if _generated(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES and f"{name}.{node.name}" not in LONG_FUNCTIONS:
                    long[f"{name}.{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
