#!/usr/bin/env bash
# Prometheus (the Debian package's binary) as a plain process on 127.0.0.1, not via systemd.
# Usage: deploy/local/prometheus.sh install|start|wait|up|down|status
#   config: deploy/local/prometheus.yml
#   state:  .infra/prometheus/{data,logs,prometheus.pid,web.yml}
# Ports, state directory and TLS mode: see lib.sh. In TLS mode the web UI and API speak HTTPS only
# (--web.config.file).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=prometheus

PROM_BIN=/usr/bin/prometheus
HOST=127.0.0.1
PORT="${CLASSFORGE_INFRA_PROMETHEUS_PORT:-19090}"
CONFIG="${CLASSFORGE_INFRA_PROMETHEUS_CONFIG:-$LOCAL_DIR/prometheus.yml}"
DIR="$INFRA/prometheus"
PIDFILE="$DIR/prometheus.pid"
LOGFILE="$DIR/logs/prometheus.log"

install() {
  [[ -x $PROM_BIN ]] && return 0
  local t0=$SECONDS
  # The package may also start its own prometheus on :9090 through systemd; that one is
  # harmless and not used (ours listens on 19090 with its own config and data).
  apt_install prometheus
  [[ -x $PROM_BIN ]] || die "apt-get installed prometheus but $PROM_BIN is missing"
  log "installed in $((SECONDS - t0))s"
}

version() { "$PROM_BIN" --version 2>&1 | sed -n '1s/^prometheus, version \([^ ]*\).*/\1/p'; }

ready() { curl_tls -sf -o /dev/null --max-time 2 "$(scheme)://$HOST:$PORT/-/ready"; }

start() {
  if adopt_or_clear prometheus "$PIDFILE" "$DIR/data"; then
    log "already running (pid $(<"$PIDFILE"))"
    return 0
  fi
  port_open "$PORT" && die "port $PORT is in use by a process these scripts did not start"
  install
  mkdir -p "$DIR/data" "$DIR/logs"
  local web_args=()
  if tls_on; then
    check_tls_dir
    cat >"$DIR/web.yml" <<EOF
# Written by deploy/local/prometheus.sh (TLS mode).
tls_server_config:
  cert_file: $TLS_DIR/server.pem
  key_file: $TLS_DIR/server.key
EOF
    web_args=(--web.config.file="$DIR/web.yml")
  fi
  log "starting Prometheus $(version) on $(scheme)://$HOST:$PORT"
  # --web.enable-lifecycle: tests may POST /-/reload after changing targets.
  start_bg "$PIDFILE" "$LOGFILE" "$PROM_BIN" "${web_args[@]}" \
    --config.file="$CONFIG" \
    --storage.tsdb.path="$DIR/data" \
    --storage.tsdb.retention.time=2d \
    --web.listen-address="$HOST:$PORT" \
    --web.enable-lifecycle
}

wait_up() {
  local t0=$SECONDS
  wait_ready prometheus "$LOGFILE" "$PIDFILE" ready || exit 1
  log "ready on $HOST:$PORT (waited $((SECONDS - t0))s)"
}

down() { stop_pid prometheus "$PIDFILE"; }

status() {
  local state=down ver=unknown
  [[ -x $PROM_BIN ]] && ver=$(version)
  adopt_or_clear prometheus "$PIDFILE" "$DIR/data" 2>/dev/null && ready && state=up
  status_line prometheus "$state" "Prometheus $ver" "$(scheme)://$HOST:$PORT"
  [[ $state == up ]]
}

component_main "$@"
