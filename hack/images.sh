#!/usr/bin/env bash
# `make images`: build modelservice-runtime and modelservice-operator from the project's
# Dockerfiles, and modelservice-gateway (Traefik, hack/gateway-up.sh) from hack/gateway/, then
# load them into the real node's containerd when it is up (hack/node-up.sh), where pods find
# them by name (nothing is pulled).
#
# The build context is staged from the allow-list in <Dockerfile>.dockerignore (its `!`
# lines), so only what that file admits reaches the build, with either builder (the legacy
# one of Debian's Docker 20.10 ignores per-Dockerfile ignore files). The base comes from
# hack/base-image.sh (python:3.11-slim where it can be had, else one made offline). The
# gateway's context is the traefik binary of hack/build-tools.sh alone, FROM scratch.
#
# Env: RUNTIME_IMAGE, OPERATOR_IMAGE (default modelservice-{runtime,operator}:dev),
#      GATEWAY_IMAGE (default modelservice-gateway:<Traefik's version>, hack/cluster-env.sh),
#      PYTHON_IMAGE (base override), IMAGES (subset: "runtime", "operator", "gateway").
# `hack/images.sh load` only loads images already built (make node-load).
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"
RUNTIME_IMAGE="${RUNTIME_IMAGE:-modelservice-runtime:dev}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-modelservice-operator:dev}"
IMAGES="${IMAGES:-runtime operator gateway}"
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

stage_traefik() { # -> prints a temp dir holding only the traefik binary (175 MiB: linked, not copied)
  local dir
  [[ -x "${BIN_DIR}/traefik" ]] || die "${BIN_DIR}/traefik is missing; run hack/build-tools.sh first"
  mkdir -p "${ROOT_DIR}/.cache"
  dir="$(mktemp -d -p "${ROOT_DIR}/.cache" gateway-context.XXXXXX)"
  ln "${BIN_DIR}/traefik" "${dir}/traefik" 2>/dev/null || cp "${BIN_DIR}/traefik" "${dir}/traefik"
  echo "${dir}"
}

build() { # dockerfile image context [docker build args...]
  local dockerfile="$1" image="$2" context="$3" start
  shift 3
  log "building ${image} from ${dockerfile}"
  start="$(date +%s)"
  if ! docker build --network host -q -f "${ROOT_DIR}/${dockerfile}" \
    "$@" -t "${image}" "${context}" >"${context}.log" 2>&1; then
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

image_of() { # what -> its image name
  case "$1" in
    runtime) echo "${RUNTIME_IMAGE}" ;;
    operator) echo "${OPERATOR_IMAGE}" ;;
    gateway) echo "${GATEWAY_IMAGE}" ;;
    *) die "IMAGES: unknown image '$1' (runtime, operator, gateway)" ;;
  esac
}

base=""
# Only the Python images need the base (the gateway's is FROM scratch).
if [[ "${MODE}" == build && " ${IMAGES} " =~ " "(runtime|operator)" " ]]; then
  base="$("${HACK_DIR}/base-image.sh")"
  log "base of the Python images: ${base}"
fi
for what in ${IMAGES}; do
  image="$(image_of "${what}")"
  [[ "${MODE}" == build ]] || continue
  case "${what}" in
    runtime | operator)
      context="$(stage_context "${what}/Dockerfile")"
      build "${what}/Dockerfile" "${image}" "${context}" --build-arg "PYTHON_IMAGE=${base}"
      ;;
    gateway)
      context="$(stage_traefik)"
      build hack/gateway/Dockerfile "${image}" "${context}"
      ;;
  esac
done

if [[ -S "${CONTAINERD_SOCK}" ]]; then
  for what in ${IMAGES}; do
    node_load "$(image_of "${what}")"
  done
else
  log "no real node is up (${CONTAINERD_SOCK}); images stay in Docker (make cluster-up, then make node-load)"
  [[ "${MODE}" == build ]] || exit 1
fi
