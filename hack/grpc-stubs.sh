#!/usr/bin/env bash
# Regenerate the checked-in gRPC stubs of the Open Inference Protocol from
# runtime/modelservice_runtime/serving/grpc_front/grpc_predict_v2.proto.
#
# grpcio-tools is a build-time tool only: it lives in its own venv (.cache/protoc-venv), at the
# version of the grpcio pin in constraints.txt, so the generated code never asks for a newer
# grpcio than the runtime installs. Its protoc stamps the gencode with its protobuf version;
# the runtime's protobuf (the pin) must be at least that (protobuf's own check at import).
#
# The messages are registered in a descriptor pool of their own, not protobuf's default one:
# tritonclient.grpc and kserve carry their own copies of the `inference` package, and the same
# message names twice in one pool fail at import, so a test or a tool may import both.
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${ROOT_DIR}/.cache/protoc-venv"
PKG="modelservice_runtime/serving/grpc_front"
version="$(sed -n 's/^grpcio==//p' "${ROOT_DIR}/constraints.txt")"
[ -n "${version}" ] || { echo "no grpcio pin in constraints.txt" >&2; exit 1; }

if ! "${VENV}/bin/python" -c "import grpc_tools, sys; import importlib.metadata as m; \
sys.exit(m.version('grpcio-tools') != '${version}')" 2>/dev/null; then
  echo "installing grpcio-tools==${version} into ${VENV}"
  "${PYTHON}" -m venv "${VENV}"
  "${VENV}/bin/pip" install -q "grpcio-tools==${version}" "grpcio==${version}"
fi

cd "${ROOT_DIR}/runtime"
"${VENV}/bin/python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
  "${PKG}/grpc_predict_v2.proto"
# A private pool (see above): the one line that names the default pool.
pb2="${PKG}/grpc_predict_v2_pb2.py"
grep -q '_descriptor_pool.Default().AddSerializedFile' "${pb2}"
sed -i 's/_descriptor_pool.Default().AddSerializedFile/POOL.AddSerializedFile/' "${pb2}"
sed -i 's/^_sym_db = _symbol_database.Default()$/&\n# Its own pool (hack\/grpc-stubs.sh): other copies of the inference package may be loaded.\nPOOL = _descriptor_pool.DescriptorPool()/' "${pb2}"
grep -q '^POOL = _descriptor_pool.DescriptorPool()$' "${pb2}"
echo "generated ${PKG}/grpc_predict_v2_pb2{,_grpc}.py and .pyi with grpcio-tools ${version}"
