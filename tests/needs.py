"""What a test needs from the machine: skipped where it is missing, a failure in CI.

`make test` on a laptop without the local control plane (or without root for the real node)
still runs what it can and lists what it left out, with the reason, at the end of the run
(tests/conftest.py). In CI (`CI=true`) nothing a test needs may be missing: `needed` fails the
test instead, so a green CI run never hides a part that did not run. The only skips CI may
show are for what its machines cannot have at all (a GPU; kind, which needs `--privileged`):
those go through `cannot_have`, and any other skip in CI fails the run (tests/conftest.py).
See tests/README.md.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

# Every skip CI may show starts with this; tests/conftest.py fails a CI run with any other.
CANNOT_HAVE = "these machines cannot have it: "


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def needed(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when CI=true. At a module's top it skips (or
    fails) the whole module."""
    if in_ci():
        pytest.fail(f"required in CI (CI=true) but missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needed_module(name: str) -> ModuleType:
    """`import name`, or `needed` naming the module: pytest.importorskip that fails in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        needed(f"the Python module {name} is not installed ({e})")


def cannot_have(reason: str) -> NoReturn:
    """Skip, in CI too: only for a GPU, or kind (Docker with --privileged)."""
    pytest.skip(CANNOT_HAVE + reason)
