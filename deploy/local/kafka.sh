#!/usr/bin/env bash
# Apache Kafka (KRaft, single combined broker+controller) as a plain process on 127.0.0.1.
# Usage: deploy/local/kafka.sh install|start|wait|up|down|status
#   jars:  $CACHE/kafka-<version>/libs   (Maven Central, via deploy/local/kafka/pom.xml)
#   state: .infra/kafka/{data,logs,server.properties,cluster-id,kafka.pid,tls/}
# Ports, state directory and TLS mode: see lib.sh. In TLS mode the client port speaks SSL only,
# SASL_PORT speaks SASL_SSL with SCRAM-SHA-512 (user and password in .infra/credentials.env), and the
# controller listener uses TLS too.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=kafka

KAFKA_VERSION=4.1.1
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
HOST=127.0.0.1
PORT="${CLASSFORGE_INFRA_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${CLASSFORGE_INFRA_KAFKA_CONTROLLER_PORT:-19093}"
SASL_PORT="${CLASSFORGE_INFRA_KAFKA_SASL_PORT:-19094}"
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

# listeners_conf: the listener part of server.properties. Loopback only: nothing outside this
# machine should reach the local broker.
listeners_conf() {
  if ! tls_on; then
    cat <<EOF
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return 0
  fi
  # Kafka reads PEM directly; the keystore file holds the PKCS#8 key (Kafka accepts no other form)
  # followed by the certificate chain.
  local keystore="$DIR/tls/keystore.pem"
  mkdir -p "$DIR/tls" && chmod 700 "$DIR/tls"
  (
    umask 077
    openssl pkcs8 -topk8 -nocrypt -in "$TLS_DIR/server.key" >"$keystore.tmp" \
      || die "cannot convert $TLS_DIR/server.key to PKCS#8"
    awk '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/' "$TLS_DIR/server.pem" >>"$keystore.tmp"
    mv "$keystore.tmp" "$keystore"
  )
  cat <<EOF
listeners=SSL://$HOST:$PORT,SASL_SSL://$HOST:$SASL_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=SSL://$HOST:$PORT,SASL_SSL://$HOST:$SASL_PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
inter.broker.listener.name=SSL
listener.security.protocol.map=CONTROLLER:SSL,SSL:SSL,SASL_SSL:SASL_SSL
ssl.keystore.type=PEM
ssl.keystore.location=$keystore
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

# Format the storage once. The cluster id is kept so re-formatting (after a partial
# `rm -rf .infra/kafka/data`) keeps a stable id in the logs. The SCRAM user of the generated
# credentials is added at format time (KRaft's only way before the broker runs), in every mode, so
# the same data serves plaintext and TLS mode; data formatted with other credentials is made again.
format_storage() {
  local user password
  ensure_credentials
  user=$(credential CLASSFORGE_KAFKA_SASL_USERNAME) password=$(credential CLASSFORGE_KAFKA_SASL_PASSWORD)
  fresh_data_for "$DIR/data" "$DIR/credentials.sha256" "$user" "$password"
  mkdir -p "$DIR/logs"
  { sed -e "s|@DATA_DIR@|$DIR/data|" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|" \
      "$LOCAL_DIR/kafka/server.properties.in"
    listeners_conf
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  [[ -f $DIR/data/meta.properties ]] && return 0
  [[ -s $DIR/cluster-id ]] || java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1 >"$DIR/cluster-id"
  log "formatting KRaft storage in $DIR/data (cluster id $(<"$DIR/cluster-id"))"
  # --standalone: this node is the single voter of a dynamic quorum (Kafka 4 default).
  java_cmd -Dlog4j2.configurationFile="$LOCAL_DIR/kafka/log4j2.properties" -Dkafka.logs.dir="$DIR/logs" \
    kafka.tools.StorageTool format --standalone --ignore-formatted \
    --add-scram "SCRAM-SHA-512=[name=$user,password=$password]" \
    -t "$(<"$DIR/cluster-id")" -c "$CONF" >>"$OUTFILE" 2>&1 \
    || { tail -n 20 "$OUTFILE" >&2; die "storage format failed"; }
}

ready() {
  port_open "$PORT" && python3 "$LOCAL_DIR/kafka/probe.py" "$HOST" "$PORT" ${TLS_DIR:+"$TLS_DIR/ca.pem"} >/dev/null 2>&1
}

start() {
  if adopt_or_clear kafka "$PIDFILE" "$CONF"; then
    log "already running (pid $(<"$PIDFILE"))"
    return 0
  fi
  local p ports=("$PORT" "$CONTROLLER_PORT")
  if tls_on; then check_tls_dir; ports+=("$SASL_PORT"); fi
  for p in "${ports[@]}"; do
    port_open "$p" && die "port $p is in use by a process these scripts did not start"
  done
  install
  format_storage
  log "starting Kafka $KAFKA_VERSION on $HOST:$PORT (controller $CONTROLLER_PORT${TLS_DIR:+; TLS, SASL_SSL on $SASL_PORT})"
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
  status_line kafka "$state" "Apache Kafka $KAFKA_VERSION (KRaft)" "$HOST:$PORT${TLS_DIR:+ (SSL; SASL_SSL $SASL_PORT)}"
  [[ $state == up ]]
}

component_main "$@"
