#!/usr/bin/env bash
# Local infrastructure for classforge without Docker: Kafka, MinIO and Prometheus as plain
# processes on 127.0.0.1. Installs once into ${CLASSFORGE_CACHE:-~/.cache/classforge};
# data, logs and pid files live in .infra/ (reset everything with `rm -rf .infra`).
# Usage: deploy/local/infra.sh up|down|status|restart
set -euo pipefail
source "$(dirname "$0")/lib.sh"

COMPONENTS=(kafka minio prometheus)

# The services' default gRPC ports (50051-50056; tests use 501xx) lie inside Linux's ephemeral port
# range (32768-60999): under connection churn an outgoing connection can take one as its source port,
# and a service started then fails to bind ("Address already in use"). Reserve them from the ephemeral
# range (root only; the setting belongs to this network namespace).
RESERVED_PORTS=50000-50999
reserve_service_ports() {
  local file=/proc/sys/net/ipv4/ip_local_reserved_ports current
  current=$(<"$file") || return 0
  [[ ,$current, == *,$RESERVED_PORTS,* ]] && return 0
  if ! echo "${current:+$current,}$RESERVED_PORTS" >"$file" 2>/dev/null; then
    log "could not reserve ports $RESERVED_PORTS from the ephemeral range (not root?); a service may rarely fail to bind"
  fi
}

up() {
  local t0=$SECONDS c
  reserve_service_ports
  if status >/dev/null 2>&1; then
    status
    log "already up"
    return 0
  fi
  # Start everything first and wait afterwards, so the three start-ups overlap.
  for c in "${COMPONENTS[@]}"; do "$LOCAL_DIR/$c.sh" start; done
  for c in "${COMPONENTS[@]}"; do "$LOCAL_DIR/$c.sh" wait; done
  status
  log "up in $((SECONDS - t0))s; for clients: eval \"\$(deploy/local/env.sh)\""
}

down() {
  local c rc=0
  # Reverse order: Prometheus stops scraping before its targets disappear.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    "$LOCAL_DIR/${COMPONENTS[i]}.sh" down || rc=1
  done
  return $rc
}

status() {
  local c rc=0
  for c in "${COMPONENTS[@]}"; do "$LOCAL_DIR/$c.sh" status || rc=1; done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  restart) down && up ;;
  *) echo "usage: $0 up|down|status|restart" >&2; exit 2 ;;
esac
