#!/usr/bin/env bash
# Prints the environment the classforge services and tests use to reach the local
# infrastructure started by infra.sh. Usage: eval "$(deploy/local/env.sh)"
set -euo pipefail
cat <<'VARS'
export CLASSFORGE_KAFKA_BOOTSTRAP=127.0.0.1:19092
export CLASSFORGE_S3_ENDPOINT=127.0.0.1:19000
export CLASSFORGE_S3_ACCESS_KEY=classforge
export CLASSFORGE_S3_SECRET_KEY=classforge-secret
export CLASSFORGE_PROMETHEUS_URL=http://127.0.0.1:19090
VARS
