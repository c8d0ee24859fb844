#!/usr/bin/env bash
# The infrastructure images (Kafka, MinIO, Prometheus) built from the same sources as deploy/local/,
# for engines that cannot pull the official ones: classforge-{kafka,minio,prometheus}:local.
# The jars and the MinIO binary come from the deploy/local install steps (cached in $CACHE).
# Usage: deploy/docker/infra.sh
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
COMPONENT=infra-images
CONTEXT="$REPO_ROOT/.build/infra-context"

"$LOCAL_DIR/../docker/engine.sh" ensure
"$LOCAL_DIR/../docker/base.sh"
"$LOCAL_DIR/kafka.sh" install
"$LOCAL_DIR/minio.sh" install
kafka_libs=$(ls -d "$CACHE"/kafka-*/libs | tail -1)
minio_bin=$(ls "$CACHE"/minio-*/bin/minio | tail -1)

rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
cp -rl "$kafka_libs" "$CONTEXT/kafka-libs" 2>/dev/null || cp -r "$kafka_libs" "$CONTEXT/kafka-libs"
cp -l "$minio_bin" "$CONTEXT/minio" 2>/dev/null || cp "$minio_bin" "$CONTEXT/minio"
cp "$LOCAL_DIR/../docker/infra/"{log4j2.properties,kafka-entrypoint.sh} "$CONTEXT/"
cp "$LOCAL_DIR/kafka/probe.py" "$CONTEXT/kafka-probe.py"

export DOCKER_BUILDKIT=0
for target in kafka minio prometheus; do
  t1=$SECONDS image="classforge-$target:local"
  if ! docker build --network host -q -f "$LOCAL_DIR/../docker/infra/Dockerfile" --target "$target" -t "$image" \
       "$CONTEXT" >/tmp/classforge-build-"$target".log 2>&1; then
    tail -n 20 /tmp/classforge-build-"$target".log >&2
    die "building $image failed (log: /tmp/classforge-build-$target.log)"
  fi
  log "$image built in $((SECONDS - t1)) s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
done
