#!/bin/sh
# The apache/kafka image's convention, so docker-compose.yml's environment works unchanged:
# every KAFKA_FOO_BAR variable becomes the property foo.bar; CLUSTER_ID formats the storage once.
set -eu
conf=/opt/kafka/config/server.properties
env | sed -n 's/^KAFKA_\([A-Z0-9_]*\)=\(.*\)$/\1=\2/p' | while IFS='=' read -r key value; do
  printf '%s=%s\n' "$(echo "$key" | tr 'A-Z_' 'a-z.')" "$value"
done >"$conf"
cp="/opt/kafka/libs/*"
if [ ! -f "$(sed -n 's/^log.dirs=//p' "$conf")/meta.properties" ]; then
  # A static quorum (controller.quorum.voters, as docker-compose.yml sets) formats as is; a dynamic
  # one (controller.quorum.bootstrap.servers) needs --standalone for its single voter.
  standalone=--standalone
  grep -q '^controller.quorum.voters=' "$conf" && standalone=
  java -cp "$cp" kafka.tools.StorageTool format $standalone --ignore-formatted \
    -t "${CLUSTER_ID:?CLUSTER_ID is required}" -c "$conf"
fi
# exec: Kafka is PID 1 and gets docker stop's SIGTERM (a clean controlled shutdown).
exec java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/log4j2.properties -Dkafka.logs.dir=/tmp \
  -cp "$cp" kafka.Kafka "$conf"
