#!/usr/bin/env bash
# Refresh constraints.txt: the exact versions both images install (runtime/Dockerfile,
# operator/Dockerfile) and the test venv is held to, so the suite runs what the images ship.
# Resolves the runtime, operator and s3 extras afresh in a throwaway venv with this host's
# Python (3.11, as the images'), then freezes it. Run it (`make constraints`), run `make test`,
# and commit both together: a version the tests have not run never reaches an image.
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
"${PYTHON}" -m venv "${tmp}/venv"
"${tmp}/venv/bin/pip" install -q --upgrade pip
"${tmp}/venv/bin/pip" install -q "${ROOT_DIR}[runtime,genai,operator,s3]"
# The dev-only block at the end (pinned by hand) survives the refresh.
marker="# Dev only, pinned by hand"
dev_block="$(sed -n "/^${marker}/,\$p" "${ROOT_DIR}/constraints.txt")"
{
  echo "# Pinned versions for the images and the test venv; refresh with \`make constraints\`"
  echo "# (hack/update-constraints.sh), then run \`make test\` before committing."
  echo "# Resolved with $("${tmp}/venv/bin/python" --version) on $(date -u +%Y-%m-%d)."
  "${tmp}/venv/bin/pip" freeze --exclude modelservice --exclude pip --exclude setuptools
  if [ -n "${dev_block}" ]; then echo "${dev_block}"; fi
} >"${ROOT_DIR}/constraints.txt"
echo "wrote ${ROOT_DIR}/constraints.txt ($(grep -vc '^#' "${ROOT_DIR}/constraints.txt") packages)"
