"""What a test needs from the machine: skipped where it is missing, a failure in CI.

`make test` on a laptop without the local control plane (or without root for the real node)
still runs what it can and lists what it left out, with the reason, in pytest's summary. In CI
(`CI=true`) nothing a test needs may be missing: the same call fails the test instead, so a
green CI run never hides a part that did not run. The only skips CI may show are for what its
machines cannot have at all (a GPU, kind), and those call pytest.skip directly.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def needed(reason: str) -> NoReturn:
    """Skip with `reason`, or fail with it when CI=true."""
    if in_ci():
        pytest.fail(f"required in CI (CI=true) but missing: {reason}", pytrace=False)
    pytest.skip(reason)
