#!/usr/bin/env bash
# Generates, ONCE, the files an overlay's secretGenerator reads, into OVERLAY/.secrets/ (git-ignored):
#
#   deploy/k8s/secrets.sh deploy/k8s/overlays/dev [NAMESPACE]     (NAMESPACE: default the overlay's `namespace:`)
#
# Nothing secret is committed (issue #16): without these files `kubectl kustomize` of the dev and operators
# overlays fails, naming the missing file. What is written (deploy/k8s/overlays/dev/secrets.example lists it):
#   s3.env                 CLASSFORGE_S3_ACCESS_KEY/_SECRET_KEY (the MinIO root pair of your Kafka/MinIO setup:
#                          edit it to match an existing MinIO; the operators overlay gives the same pair to its tenant)
#   minio-config.env       the MinIO operator's config.env for the tenant (operators overlay)
#   tls/classforge/        tls.crt, tls.key, ca.crt for the classforge-tls Secret: CN classforge, SANs every
#                          Service name, short and <name>.<namespace>.svc[.cluster.local], localhost, 127.0.0.1
#   tokens.yaml, identities.yaml, operator.env, ca/, tf-serving/ssl.config
#                          as deploy/compose/secrets.sh makes them (the same CA signs everything; `classforge`,
#                          the services' shared CN, is a viewer)
# Idempotent: existing files are kept; delete one (or .secrets/) to regenerate it. Then
#   kubectl kustomize deploy/k8s/overlays/dev | kubectl apply -f -
set -euo pipefail
umask 022
HERE=$(cd "$(dirname "$0")" && pwd)
OVERLAY=${1:?usage: deploy/k8s/secrets.sh OVERLAY_DIR [NAMESPACE]}
[[ -f $OVERLAY/kustomization.yaml ]] || { echo "secrets.sh: $OVERLAY has no kustomization.yaml" >&2; exit 2; }
NAMESPACE=${2:-$(sed -n 's/^namespace:[[:space:]]*//p' "$OVERLAY/kustomization.yaml")}
NAMESPACE=${NAMESPACE:-classforge}
DIR=$OVERLAY/.secrets

"$HERE/../compose/secrets.sh" "$DIR" >/dev/null
# shellcheck disable=SC1091
source "$DIR/compose.env"

if [[ ! -s $DIR/s3.env ]]; then
  printf 'CLASSFORGE_S3_ACCESS_KEY=%s\nCLASSFORGE_S3_SECRET_KEY=%s\n' "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >"$DIR/s3.env"
fi
if [[ ! -s $DIR/minio-config.env ]]; then
  printf 'export MINIO_ROOT_USER="%s"\nexport MINIO_ROOT_PASSWORD="%s"\n' "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" \
    >"$DIR/minio-config.env"
fi
grep -q '^classforge:' "$DIR/identities.yaml" || echo "classforge: viewer" >>"$DIR/identities.yaml"

out=$DIR/tls/classforge
mkdir -p "$out"
if [[ ! -s $out/tls.crt || ! -s $out/tls.key ]]; then
  sans="DNS:localhost,IP:127.0.0.1"
  for name in jobs ingest tfrecords trainer evaluator inference tf-serving; do
    sans+=",DNS:$name,DNS:$name.$NAMESPACE.svc,DNS:$name.$NAMESPACE.svc.cluster.local"
  done
  ext=$(mktemp)
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$sans" >"$ext"
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=classforge" -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
  openssl x509 -req -in "$out/tls.csr" -CA "$DIR/ca/ca.crt" -CAkey "$DIR/ca/ca.key" -CAcreateserial -days 825 \
    -sha256 -extfile "$ext" -out "$out/tls.crt" 2>/dev/null
  rm -f "$ext" "$out/tls.csr"
fi
cp "$DIR/ca/ca.crt" "$out/ca.crt"
echo "$DIR"
