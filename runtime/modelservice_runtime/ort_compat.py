"""The one place the runtime touches onnxruntime below its public API.

onnxruntime exports no name for the error a session raises when an input is refused (wrong
rank, a dimension the graph fixes, a dtype mismatch): it lives in the compiled module
`onnxruntime.capi.onnxruntime_pybind11_state`. tests/unit/test_third_party_internals.py fails
loudly when an upgrade moves it; TESTED names the minors it was checked on (pyproject's pin
range says the same).
"""

from __future__ import annotations

TESTED = ("1.32",)


def invalid_argument() -> type[Exception]:
    """The exception class of onnxruntime's INVALID_ARGUMENT status (bad input to a run)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return state.InvalidArgument
