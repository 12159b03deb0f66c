#!/usr/bin/env bash
# llama.cpp's `llama-server` and `llama-quantize`, the CPU peer of bench/llm.py, built from the
# llama.cpp source that PyPI's llama-cpp-python sdist vendors (nothing of llama.cpp is kept in
# this repository). Idempotent: the build is cached under .cache/llama.cpp/<version>/ and
# reused; prints that folder. Used by `make bench` (bench/llm.py), never by `make test`.
#
#   hack/build-llamacpp.sh            # prints .cache/llama.cpp/0.3.36 (bin/, src/)
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 hack/build-llamacpp.sh
#
# Flags (see ../shared/LLM_PEER.md): native code, but no AMX (on CPUs with AMX every Q4_0
# decode segfaulted in ggml_backend_amx_mul_mat); shared libraries; CPU only; no curl.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
PY="${PY:-.cache/venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
DEST="$PWD/.cache/llama.cpp/$VERSION"
if [[ -x "$DEST/bin/llama-server" && -x "$DEST/bin/llama-quantize" && -f "$DEST/src/convert_hf_to_gguf.py" ]]; then
    echo "$DEST"
    exit 0
fi
mkdir -p "$DEST"
# One build at a time (two benches starting at once wait for the first).
exec 9>"$DEST.lock"
flock 9
if [[ -x "$DEST/bin/llama-server" && -x "$DEST/bin/llama-quantize" && -f "$DEST/src/convert_hf_to_gguf.py" ]]; then
    echo "$DEST"
    exit 0
fi
# The build folder stays until the binaries are in place: an interrupted or failed build
# resumes where it stopped (ninja) instead of compiling everything again.
WORK="$DEST.build"
mkdir -p "$WORK"
if [[ ! -f "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp/CMakeLists.txt" ]]; then
    echo "llama.cpp: downloading llama-cpp-python==$VERSION's sdist" >&2
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
    tar xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
fi
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
echo "llama.cpp: building llama-server and llama-quantize (nice, -j$JOBS; several minutes)" >&2
nice -n 10 cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
    -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON >&2
nice -n 10 cmake --build "$WORK/build" -j "$JOBS" --target llama-server llama-quantize >&2
rm -rf "$DEST/bin" "$DEST/src"
mkdir -p "$DEST/bin" "$DEST/src"
cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-quantize" "$DEST/bin/"
find "$WORK/build" -name '*.so*' -exec cp -P {} "$DEST/bin/" \;
# The converter (HF folder -> GGUF) and its gguf package, for bench/llm_models.py.
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/gguf-py" "$DEST/src/"
[[ -d "$SRC/conversion" ]] && cp -r "$SRC/conversion" "$DEST/src/"
cp -r "$SRC/LICENSE" "$DEST/src/" 2>/dev/null || true
"$DEST/bin/llama-server" --version >&2 || true
rm -rf "$WORK"
echo "$DEST"
