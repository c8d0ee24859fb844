#!/usr/bin/env bash
# The infrastructure images (Kafka, MinIO, Prometheus) built from the same sources as deploy/local/,
# for engines that cannot pull the official ones: classforge-{kafka,minio,prometheus}:local.
# The jars and the MinIO binary come from the deploy/local install steps (cached in $CACHE).
# Usage: deploy/docker/infra.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=infra-images
CONTEXT="$REPO_ROOT/.build/infra-context"

"$DOCKER_DIR/engine.sh" ensure
"$DOCKER_DIR/base.sh"
"$LOCAL_DIR/kafka.sh" install
"$LOCAL_DIR/minio.sh" install
kafka_libs=$(ls -d "$CACHE"/kafka-*/libs | tail -1)
minio_bin=$(ls "$CACHE"/minio-*/bin/minio | tail -1)

rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
cp -rl "$kafka_libs" "$CONTEXT/kafka-libs" 2>/dev/null || cp -r "$kafka_libs" "$CONTEXT/kafka-libs"
cp -l "$minio_bin" "$CONTEXT/minio" 2>/dev/null || cp "$minio_bin" "$CONTEXT/minio"
cp "$DOCKER_DIR/infra/"{log4j2.properties,kafka-entrypoint.sh} "$CONTEXT/"
cp "$LOCAL_DIR/kafka/probe.py" "$CONTEXT/kafka-probe.py"

for target in kafka minio prometheus; do
  build_target "$DOCKER_DIR/infra/Dockerfile" "$CONTEXT" "$target" "classforge-$target:local"
done
