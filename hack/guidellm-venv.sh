#!/usr/bin/env bash
# guidellm, the established load generator bench/llm.py cross-checks its own client with,
# in a venv of its own (its dependencies, datasets among them, stay out of the project's).
# Idempotent; prints the venv's python. Used by `make bench` (bench/llm.py), never by tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${GUIDELLM_VERSION:-0.8.1}"
VENV="$PWD/.cache/bench-guidellm-venv"
if ! "$VENV/bin/python" -c "import guidellm" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet "guidellm==$VERSION" >&2
fi
echo "$VENV/bin/python"
