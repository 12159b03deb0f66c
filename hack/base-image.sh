#!/usr/bin/env bash
# Print the Python base image for the Dockerfiles' PYTHON_IMAGE build arg, making one
# offline if need be. In order:
#   1. $PYTHON_IMAGE, if set (the user's choice, used as it is);
#   2. python:3.11-slim, the Dockerfiles' default, if the engine has it or can pull it;
#   3. modelservice-base:bookworm, made here without a registry: debootstrap of Debian
#      bookworm (minbase) with python3 (3.11, as python:3.11-slim) and the host's CA bundle,
#      so pip inside a build trusts what the host trusts. Cached in the engine and as a tarball
#      under .cache/images, so it is made once per machine (about a minute).
# Needs a Docker engine (hack/docker-up.sh); building the offline base needs root and debootstrap.
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${ROOT_DIR}/.cache/images"
OFFLINE_BASE="modelservice-base:bookworm"
DEFAULT_BASE="python:3.11-slim"
HOST_CA="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ -n "${PYTHON_IMAGE:-}" ]]; then echo "${PYTHON_IMAGE}"; exit 0; fi
if have "${DEFAULT_BASE}"; then echo "${DEFAULT_BASE}"; exit 0; fi
if have "${OFFLINE_BASE}"; then echo "${OFFLINE_BASE}"; exit 0; fi
# A registry that is not there fails fast (name resolution); one that hangs is cut off.
if timeout 30 docker pull -q "${DEFAULT_BASE}" >/dev/null 2>&1; then echo "${DEFAULT_BASE}"; exit 0; fi
log "${DEFAULT_BASE} cannot be pulled; using the offline base ${OFFLINE_BASE}"

tarball="${CACHE_DIR}/base-bookworm.tar"
if [[ ! -f "${tarball}" ]]; then
  [[ "$(id -u)" == 0 ]] || die "making ${OFFLINE_BASE} needs root (debootstrap); or set PYTHON_IMAGE"
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap, or hack/host-deps.sh)"
  # The host's own Debian mirror (the one apt-get reaches here), else Debian's default.
  mirror="$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
    /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  mkdir -p "${CACHE_DIR}"
  root="$(mktemp -d)"
  trap 'rm -rf "${root}"' EXIT
  log "debootstrap bookworm (minbase + python3) from ${mirror}"
  start="$(date +%s)"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "${root}" "${mirror}" >"${CACHE_DIR}/debootstrap.log" 2>&1 ||
    { tail -n 20 "${CACHE_DIR}/debootstrap.log" >&2; die "debootstrap failed"; }
  [[ -f "${HOST_CA}" ]] && cp "${HOST_CA}" "${root}/etc/ssl/certs/ca-certificates.crt"
  rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
  mkdir -p "${CACHE_DIR}"
  tar -C "${root}" --numeric-owner -cf "${tarball}.tmp" .
  mv "${tarball}.tmp" "${tarball}"
  log "made ${tarball} in $(($(date +%s) - start))s"
fi
# pip ships its own CA list; point it (and Python's ssl) at the system bundle copied in above.
docker import \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8' \
  --change 'CMD ["python3"]' "${tarball}" "${OFFLINE_BASE}" >/dev/null
echo "${OFFLINE_BASE}"
