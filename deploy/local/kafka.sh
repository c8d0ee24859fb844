#!/usr/bin/env bash
# Apache Kafka (KRaft, single combined broker+controller) as a plain process on 127.0.0.1.
# Usage: deploy/local/kafka.sh install|start|wait|up|down|status
#   jars:  $CACHE/kafka-<version>/libs   (Maven Central, via deploy/local/kafka/pom.xml)
#   state: .infra/kafka/{data,logs,server.properties,cluster-id,kafka.pid}
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=kafka

KAFKA_VERSION=4.1.1
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
HOST=127.0.0.1 PORT=19092 CONTROLLER_PORT=19093
DIR="$INFRA/kafka"
CONF="$DIR/server.properties"
PIDFILE="$DIR/kafka.pid"
LOGFILE="$DIR/logs/server.log"   # written by log4j2
OUTFILE="$DIR/logs/stdout.log"   # JVM stdout/stderr (crashes before logging starts)

need_java() {
  # Kafka 4.x brokers need Java 17+.
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1 || true)
  if [[ -z $v || $v -lt 17 ]]; then apt_install openjdk-17-jre-headless; fi
}

install() {
  if [[ -f $KAFKA_HOME/.complete ]]; then return 0; fi
  need_java
  command -v mvn >/dev/null || apt_install maven
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_HOME/libs"
  local tmp="$KAFKA_HOME.tmp.$$" t0=$SECONDS
  rm -rf "$tmp"
  # Copy into a scratch dir and rename at the end, so an interrupted download never
  # leaves a half-filled libs/ that looks installed.
  # (Debian's mvn 3.8 prints bare colour-reset codes even with -q; sed drops them.)
  mvn -q -B -f "$LOCAL_DIR/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$tmp/libs" 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2
  [[ -f $tmp/libs/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar not fetched"
  touch "$tmp/.complete"
  rm -rf "$KAFKA_HOME" && mv "$tmp" "$KAFKA_HOME"
  log "installed in $((SECONDS - t0))s"
}

java_cmd() { java -cp "$KAFKA_HOME/libs/*" "$@"; }

# Format the storage once. The cluster id is kept so re-formatting (after a partial
# `rm -rf .infra/kafka/data`) keeps a stable id in the logs.
format_storage() {
  mkdir -p "$DIR/data" "$DIR/logs"
  sed "s|@DATA_DIR@|$DIR/data|" "$LOCAL_DIR/kafka/server.properties.in" >"$CONF"
  [[ -f $DIR/data/meta.properties ]] && return 0
  [[ -s $DIR/cluster-id ]] || java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$DIR/cluster-id"
  log "formatting KRaft storage in $DIR/data (cluster id $(<"$DIR/cluster-id"))"
  # --standalone: this node is the single voter of a dynamic quorum (Kafka 4 default).
  java_cmd -Dlog4j2.configurationFile="$LOCAL_DIR/kafka/log4j2.properties" -Dkafka.logs.dir="$DIR/logs" \
    kafka.tools.StorageTool format --standalone --ignore-formatted \
    -t "$(<"$DIR/cluster-id")" -c "$CONF" >>"$OUTFILE" 2>&1 \
    || { tail -n 20 "$OUTFILE" >&2; die "storage format failed"; }
}

ready() {
  port_open "$PORT" && python3 "$LOCAL_DIR/kafka/probe.py" "$HOST" "$PORT" >/dev/null 2>&1
}

start() {
  if adopt_or_clear kafka "$PIDFILE" "$CONF"; then
    log "already running (pid $(<"$PIDFILE"))"
    return 0
  fi
  local p
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_open "$p" && die "port $p is in use by a process these scripts did not start"
  done
  install
  format_storage
  log "starting Kafka $KAFKA_VERSION on $HOST:$PORT (controller $CONTROLLER_PORT)"
  # The same JVM flags as kafka-server-start.sh, with a small heap for local use.
  start_bg "$PIDFILE" "$OUTFILE" java -Xms256m -Xmx512m \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOCAL_DIR/kafka/log4j2.properties" -Dkafka.logs.dir="$DIR/logs" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$CONF"
}

wait_up() {
  local t0=$SECONDS
  [[ -f $LOGFILE ]] || touch "$LOGFILE"
  wait_ready kafka "$LOGFILE" "$PIDFILE" ready || { tail -n 20 "$OUTFILE" >&2 || true; exit 1; }
  log "ready on $HOST:$PORT (waited $((SECONDS - t0))s)"
}

down() { stop_pid kafka "$PIDFILE"; }

status() {
  local state=down
  adopt_or_clear kafka "$PIDFILE" "$CONF" 2>/dev/null && ready && state=up
  status_line kafka "$state" "Apache Kafka $KAFKA_VERSION (KRaft)" "$HOST:$PORT"
  [[ $state == up ]]
}

component_main "$@"
