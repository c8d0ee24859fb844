#!/usr/bin/env bash
# `make images`: every classforge image, built with no registry and no package index.
#   1. the engine (deploy/docker/engine.sh) and the base image (deploy/docker/base.sh);
#   2. the wheelhouse: `pip download -r requirements.lock` on the host, cached in $CACHE/wheelhouse;
#   3. a build context holding only what the Dockerfile copies (services/, gen/, the lock, the wheels,
#      hard-linked), then one `docker build --target <service>` per service, with --network host.
# Dependency layers come before the source layers, so a source-only change rebuilds seconds of work.
# Usage: deploy/docker/images.sh [SERVICE...]   (default: every service; TAG=dev)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=images
TAG=${CLASSFORGE_IMAGE_TAG:-dev}
ALL=(jobs ingest tfrecords inference trainer evaluator model-server)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
WHEELHOUSE="$CACHE/wheelhouse"
CONTEXT="$REPO_ROOT/.build/docker-context"
PY="$REPO_ROOT/.venv/bin/python"

"$DOCKER_DIR/engine.sh" ensure
"$DOCKER_DIR/base.sh"

t0=$SECONDS
mkdir -p "$WHEELHOUSE"
lock_sum=$(cat "$REPO_ROOT/requirements.lock" "$REPO_ROOT/deploy/docker/build-tools.lock" | sha256sum | cut -d' ' -f1)
if [[ $(cat "$WHEELHOUSE/.lock.sha256" 2>/dev/null) != "$lock_sum" ]]; then
  # --no-deps: the lock already lists every transitive package.
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -r "$REPO_ROOT/requirements.lock" -d "$WHEELHOUSE" \
    || die "pip download -r requirements.lock failed (is the package index reachable from the host?)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$WHEELHOUSE" \
    -r "$REPO_ROOT/deploy/docker/build-tools.lock" \
    || die "pip download -r deploy/docker/build-tools.lock failed"
  echo "$lock_sum" >"$WHEELHOUSE/.lock.sha256"
fi
log "wheelhouse ready in $((SECONDS - t0)) s ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels)"

# The context: exactly the files the Dockerfile copies. Wheels are hard links (no copy of 700 MB).
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/wheels"
cp -l "$WHEELHOUSE"/*.whl "$CONTEXT/wheels/" 2>/dev/null || cp "$WHEELHOUSE"/*.whl "$CONTEXT/wheels/"
cp "$REPO_ROOT/requirements.lock" "$CONTEXT/"
(cd "$REPO_ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - services gen) | tar -C "$CONTEXT" -xf -

for target in "${TARGETS[@]}"; do
  build_target "$DOCKER_DIR/Dockerfile" "$CONTEXT" "$target" "classforge-$target:$TAG"
done
log "all images in $((SECONDS - t0)) s"
