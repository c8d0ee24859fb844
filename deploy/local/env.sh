#!/usr/bin/env bash
# Prints the environment the classforge services and tests use to reach the local
# infrastructure started by infra.sh. Usage: eval "$(deploy/local/env.sh)"
# The object store's credentials are the ones infra.sh generated into .infra/credentials.env
# (there are no defaults). Honours the same CLASSFORGE_INFRA_* overrides as infra.sh (lib.sh), so
# a second or TLS instance prints its own ports, https URLs and CA files.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ -s $CREDENTIALS ]] || die "no $CREDENTIALS yet: start the infrastructure first (deploy/local/infra.sh up)"
var() { printf 'export %s=%q\n' "$1" "$2"; }

var CLASSFORGE_KAFKA_BOOTSTRAP "127.0.0.1:${CLASSFORGE_INFRA_KAFKA_PORT:-19092}"
var CLASSFORGE_S3_ENDPOINT "127.0.0.1:${CLASSFORGE_INFRA_MINIO_PORT:-19000}"
var CLASSFORGE_S3_ACCESS_KEY "$(credential CLASSFORGE_S3_ACCESS_KEY)"
var CLASSFORGE_S3_SECRET_KEY "$(credential CLASSFORGE_S3_SECRET_KEY)"
var CLASSFORGE_PROMETHEUS_URL "$(scheme)://127.0.0.1:${CLASSFORGE_INFRA_PROMETHEUS_PORT:-19090}"
if tls_on; then
  var CLASSFORGE_KAFKA_SECURITY_PROTOCOL SSL
  var CLASSFORGE_KAFKA_SSL_CA "$TLS_DIR/ca.pem"
  var CLASSFORGE_S3_SECURE true
  var CLASSFORGE_S3_CA_BUNDLE "$TLS_DIR/ca.pem"
fi
