#!/usr/bin/env bash
# MinIO (S3-compatible object store) as a plain process on 127.0.0.1.
# Usage: deploy/local/minio.sh install|start|wait|up|down|status
#   binary: $CACHE/minio-<version>/bin/minio   (go install from the Go module proxy)
#   state:  .infra/minio/{data,logs,minio.pid,certs/}
# Ports, state directory and TLS mode: see lib.sh. The root user and password are generated once into
# .infra/credentials.env (never a default); in TLS mode the S3 API and the console speak HTTPS only.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=minio

# MinIO's release tags (RELEASE.2025-…) are not semver, so the Go module proxy serves a
# pseudo-version; this is what `go install github.com/minio/minio@latest` resolved to.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_HOME="$CACHE/minio-$MINIO_VERSION"
MINIO_BIN="$MINIO_HOME/bin/minio"
HOST=127.0.0.1
PORT="${CLASSFORGE_INFRA_MINIO_PORT:-19000}"
CONSOLE_PORT="${CLASSFORGE_INFRA_MINIO_CONSOLE_PORT:-19001}"
DIR="$INFRA/minio"
PIDFILE="$DIR/minio.pid"
LOGFILE="$DIR/logs/minio.log"

install() {
  [[ -x $MINIO_BIN ]] && return 0
  # The module's go.mod asks for Go 1.24+; with an older go, GOTOOLCHAIN=auto fetches a
  # newer toolchain from the Go module proxy.
  command -v go >/dev/null || die "Go is needed to build MinIO (go.dev/dl; Go >= 1.21, the module asks for 1.24)"
  log "building $MINIO_MODULE@$MINIO_VERSION into $MINIO_HOME/bin (first time only; minutes)"
  local tmp="$MINIO_HOME.tmp.$$" t0=$SECONDS
  rm -rf "$tmp" && mkdir -p "$tmp/bin"
  # GOBIN puts the binary in the cache; build into a scratch dir and rename so an
  # interrupted build never looks installed. -buildvcs=false: the tree is a module zip.
  GOBIN="$tmp/bin" GOFLAGS="${GOFLAGS:--buildvcs=false}" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" \
    go install "$MINIO_MODULE@$MINIO_VERSION" >&2
  [[ -x $tmp/bin/minio ]] || die "go install finished but no minio binary"
  rm -rf "$MINIO_HOME" && mv "$tmp" "$MINIO_HOME"
  log "built in $((SECONDS - t0))s"
}

ready() { curl_tls -sf -o /dev/null --max-time 2 "$(scheme)://$HOST:$PORT/minio/health/ready"; }

# certs_dir: MinIO's --certs-dir layout (public.crt, private.key, CAs/) made from the TLS mode's files;
# MinIO serves HTTPS on every port once public.crt is there.
certs_dir() {
  local certs="$DIR/certs"
  rm -rf "$certs" && mkdir -p "$certs/CAs" && chmod 700 "$certs"
  awk '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/' "$TLS_DIR/server.pem" >"$certs/public.crt"
  (umask 077 && cp "$TLS_DIR/server.key" "$certs/private.key")
  cp "$TLS_DIR/ca.pem" "$certs/CAs/ca.pem"
}

start() {
  if adopt_or_clear minio "$PIDFILE" "$DIR/data"; then
    log "already running (pid $(<"$PIDFILE"))"
    return 0
  fi
  port_open "$PORT" && die "port $PORT is in use by a process these scripts did not start"
  install
  ensure_credentials
  local user password tls_args=()
  user=$(credential CLASSFORGE_S3_ACCESS_KEY) password=$(credential CLASSFORGE_S3_SECRET_KEY)
  # MinIO encrypts its IAM state with the root credentials: data made with others (the old fixed
  # classforge/classforge-secret, or a removed credentials file) is made again.
  fresh_data_for "$DIR/data" "$DIR/credentials.sha256" "$user" "$password"
  mkdir -p "$DIR/logs"
  if tls_on; then
    check_tls_dir
    certs_dir
    tls_args=(--certs-dir "$DIR/certs")
  fi
  log "starting MinIO on $(scheme)://$HOST:$PORT (console $HOST:$CONSOLE_PORT)"
  # MINIO_PROMETHEUS_AUTH_TYPE=public lets Prometheus scrape /minio/v2/metrics/* without a
  # bearer token. Update checks are off: there is no route to the internet from here.
  # The credentials reach MinIO through its environment, never its command line (ps shows that).
  MINIO_ROOT_USER="$user" MINIO_ROOT_PASSWORD="$password" \
  MINIO_PROMETHEUS_AUTH_TYPE=public MINIO_UPDATE=off MINIO_BROWSER=on \
    start_bg "$PIDFILE" "$LOGFILE" "$MINIO_BIN" server "$DIR/data" \
      --address "$HOST:$PORT" --console-address "$HOST:$CONSOLE_PORT" --anonymous "${tls_args[@]}"
}

wait_up() {
  local t0=$SECONDS
  wait_ready minio "$LOGFILE" "$PIDFILE" ready || exit 1
  log "ready on $HOST:$PORT (waited $((SECONDS - t0))s)"
}

down() { stop_pid minio "$PIDFILE"; }

status() {
  local state=down
  adopt_or_clear minio "$PIDFILE" "$DIR/data" 2>/dev/null && ready && state=up
  status_line minio "$state" "MinIO $MINIO_VERSION" "$(scheme)://$HOST:$PORT"
  [[ $state == up ]]
}

component_main "$@"
