#!/usr/bin/env bash
# `make images`: build modelservice-runtime and modelservice-operator from the project's
# Dockerfiles, then load them into the real node's containerd when it is up (hack/node-up.sh),
# where pods find them by name (imagePullPolicy IfNotPresent: nothing is pulled).
#
# The build context is staged from the allow-list in <Dockerfile>.dockerignore (its `!`
# lines), so only what that file admits reaches the build, with either builder (the legacy
# one of Debian's Docker 20.10 ignores per-Dockerfile ignore files). The base comes from
# hack/base-image.sh (python:3.11-slim where it can be had, else one made offline).
#
# Env: RUNTIME_IMAGE, OPERATOR_IMAGE (default modelservice-{runtime,operator}:dev),
#      PYTHON_IMAGE (base override), IMAGES (subset: "runtime", "operator").
# `hack/images.sh load` only loads images already built (make node-load).
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-modelservice-runtime:dev}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-modelservice-operator:dev}"
IMAGES="${IMAGES:-runtime operator}"
log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

"${HACK_DIR}/docker-up.sh"
MODE="${1:-build}"

stage_context() { # dockerfile -> prints a temp dir holding the allow-listed paths
  local dockerfile="$1" dir path
  dir="$(mktemp -d)"
  while read -r path; do
    [[ -e "${ROOT_DIR}/${path}" ]] || die "${dockerfile}.dockerignore admits ${path}, which does not exist"
    mkdir -p "${dir}/$(dirname "${path}")"
    cp -r "${ROOT_DIR}/${path}" "${dir}/${path}"
  done < <(sed -n 's/^!//p' "${ROOT_DIR}/${dockerfile}.dockerignore")
  find "${dir}" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  find "${dir}" -name '*.pyc' -delete
  echo "${dir}"
}

build() { # dockerfile image
  local dockerfile="$1" image="$2" context start
  context="$(stage_context "${dockerfile}")"
  log "building ${image} from ${dockerfile} on ${base}"
  start="$(date +%s)"
  if ! docker build --network host -q -f "${ROOT_DIR}/${dockerfile}" \
    --build-arg "PYTHON_IMAGE=${base}" -t "${image}" "${context}" >"${context}.log" 2>&1; then
    tail -n 30 "${context}.log" >&2
    rm -rf "${context}" "${context}.log"
    die "docker build of ${image} failed"
  fi
  rm -rf "${context}" "${context}.log"
  log "built ${image} in $(($(date +%s) - start))s ($(docker image inspect -f '{{.Size}}' "${image}" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# Into the node's containerd, under the name a pod spec uses (docker.io/library/NAME:TAG
# for a bare NAME:TAG, as the kubelet normalizes it).
node_load() { # image
  local start
  start="$(date +%s)"
  docker save "$1" | ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import --no-unpack - >/dev/null
  log "loaded $1 into the node's containerd in $(($(date +%s) - start))s"
}

[[ "${MODE}" == build ]] && base="$("${HACK_DIR}/base-image.sh")"
for what in ${IMAGES}; do
  [[ "${MODE}" == build ]] || break
  case "${what}" in
    runtime) build runtime/Dockerfile "${RUNTIME_IMAGE}" ;;
    operator) build operator/Dockerfile "${OPERATOR_IMAGE}" ;;
    *) die "IMAGES: unknown image '${what}' (runtime, operator)" ;;
  esac
done

if [[ -S "${CONTAINERD_SOCK}" ]]; then
  for what in ${IMAGES}; do
    [[ "${what}" == runtime ]] && node_load "${RUNTIME_IMAGE}"
    [[ "${what}" == operator ]] && node_load "${OPERATOR_IMAGE}"
  done
else
  log "no real node is up (${CONTAINERD_SOCK}); images stay in Docker (make cluster-up, then make node-load)"
  [[ "${MODE}" == build ]] || exit 1
fi
