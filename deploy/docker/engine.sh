#!/usr/bin/env bash
# A Docker engine for `make images` and `make test-compose`: install it when missing (Debian's
# docker.io and docker-compose, as root) and start dockerd when it is not running.
#
# The engine this script starts keeps test traffic on loopback: no bridge network, no iptables
# rules (the test stack runs with network_mode: host). An engine that already runs is used as is.
# Usage: deploy/docker/engine.sh ensure|status|stop
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
COMPONENT=docker
DOCKERD_LOG=${CLASSFORGE_DOCKERD_LOG:-/var/log/classforge-dockerd.log}
DOCKERD_PIDFILE=/var/run/classforge-dockerd.pid

engine_up() { docker info >/dev/null 2>&1; }

ensure() {
  command -v docker >/dev/null && command -v dockerd >/dev/null || apt_install docker.io
  command -v docker-compose >/dev/null || apt_install docker-compose
  engine_up && return 0
  [[ $(id -u) -eq 0 ]] || die "the Docker engine is not running and starting dockerd needs root"
  log "starting dockerd (--bridge=none --iptables=false; log: $DOCKERD_LOG)"
  nohup setsid dockerd --bridge=none --iptables=false --ip-masq=false \
    --pidfile "$DOCKERD_PIDFILE" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until engine_up; do
    if ((SECONDS > deadline)); then
      die "dockerd did not answer within 60 s: $(tail -n 1 "$DOCKERD_LOG" 2>/dev/null)"
    fi
    sleep 1
  done
  log "engine up: $(docker version --format 'Docker {{.Server.Version}}, storage driver' 2>/dev/null) $(docker info --format '{{.Driver}}' 2>/dev/null)"
}

status() { engine_up && echo "docker up" || { echo "docker down"; return 1; }; }

stop() {
  [[ -s $DOCKERD_PIDFILE ]] || { log "no dockerd started by these scripts"; return 0; }
  kill -TERM "$(<"$DOCKERD_PIDFILE")" 2>/dev/null || true
}

case "${1:-}" in
  ensure) ensure ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 ensure|status|stop" >&2; exit 2 ;;
esac
