#!/usr/bin/env bash
# Installs (once, cached) the tools that check deploy/ without a Docker engine or a cluster:
#   kustomize           sigs.k8s.io/kustomize/kustomize/v5, built with `go install` (Go module proxy)
#   validate venv       kubernetes-validate from PyPI: the Kubernetes JSON schemas (v1.x, strict)
#                       it ships, plus jsonschema; nothing is downloaded when validating
#   docker-compose      Debian package (1.29, `docker-compose config` needs no engine); only as root
# promtool comes from the Debian package `prometheus` (installed by deploy/local) and is only checked.
#
#   deploy/tools/install.sh [kustomize|validate|compose|all]   (default all)
#   deploy/tools/install.sh env                                 prints KEY=VALUE lines for the tests
#
# Idempotent: each tool lives under ${CLASSFORGE_CACHE:-$HOME/.cache/classforge}/deploy-tools with
# its version in the path, so a second run does nothing. Exits non-zero only when a requested tool
# can neither be found nor installed; the reason goes to stderr.
set -euo pipefail

KUSTOMIZE_VERSION=v5.7.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CACHE="${CLASSFORGE_CACHE:-$HOME/.cache/classforge}/deploy-tools"
KUSTOMIZE_BIN="$CACHE/kustomize-$KUSTOMIZE_VERSION/kustomize"
VALIDATE_VENV="$CACHE/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
PYTHON_BASE="${PYTHON_BASE:-python3.11}"

log() { echo "deploy/tools/install.sh: $*" >&2; }

install_kustomize() {
  [[ -x "$KUSTOMIZE_BIN" ]] && return 0
  if ! command -v go >/dev/null; then
    log "kustomize: Go is not installed (needed for go install sigs.k8s.io/kustomize/kustomize/v5)"
    return 1
  fi
  log "kustomize: go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  local tmp
  tmp="$(mktemp -d "$CACHE/.kustomize.XXXXXX")"
  # build outside the repository so its go.work/go.mod (if any) cannot interfere
  (cd "$tmp" && GOBIN="$tmp/bin" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION")
  mkdir -p "$(dirname "$KUSTOMIZE_BIN")"
  mv "$tmp/bin/kustomize" "$KUSTOMIZE_BIN"
  rm -rf "$tmp"
}

install_validate() {
  [[ -f "$VALIDATE_VENV/.installed" ]] && return 0
  if ! command -v "$PYTHON_BASE" >/dev/null; then
    log "validate: $PYTHON_BASE not found"
    return 1
  fi
  log "validate: venv with kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  rm -rf "$VALIDATE_VENV"
  "$PYTHON_BASE" -m venv "$VALIDATE_VENV"
  "$VALIDATE_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  touch "$VALIDATE_VENV/.installed"
}

install_compose() {
  command -v docker-compose >/dev/null && return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    log "compose: docker-compose missing and apt-get cannot run here (not root or no apt)"
    return 1
  fi
  log "compose: apt-get install docker-compose"
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq docker-compose >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq docker-compose >/dev/null
  fi
}

print_env() {
  [[ -x "$KUSTOMIZE_BIN" ]] && echo "KUSTOMIZE=$KUSTOMIZE_BIN"
  [[ -f "$VALIDATE_VENV/.installed" ]] && echo "VALIDATE_PYTHON=$VALIDATE_VENV/bin/python"
  command -v docker-compose >/dev/null && echo "DOCKER_COMPOSE=$(command -v docker-compose)"
  command -v promtool >/dev/null && echo "PROMTOOL=$(command -v promtool)"
  command -v kubectl >/dev/null && echo "KUBECTL=$(command -v kubectl)"
  return 0
}

mkdir -p "$CACHE"
# one installer at a time (parallel test runs share the cache)
exec 9>"$CACHE/.lock"
flock 9

rc=0
case "${1:-all}" in
  kustomize) install_kustomize || rc=1 ;;
  validate) install_validate || rc=1 ;;
  compose) install_compose || rc=1 ;;
  all) install_kustomize || rc=1; install_validate || rc=1; install_compose || rc=1 ;;
  env) print_env ;;
  *) log "unknown tool: $1"; exit 2 ;;
esac
exit $rc
