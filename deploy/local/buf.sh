#!/usr/bin/env bash
# Runs a pinned buf (the npm package @bufbuild/buf, installed once into the cache dir).
# Usage: deploy/local/buf.sh lint protos   (any buf arguments; works from any directory)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COMPONENT=buf

BUF_VERSION=1.75.0
BUF_DIR="$CACHE/buf-$BUF_VERSION"
BUF_BIN="$BUF_DIR/node_modules/.bin/buf"

if [[ ! -x $BUF_BIN ]]; then
  command -v npm >/dev/null || die "npm is needed to install buf (apt-get install -y npm)"
  log "installing @bufbuild/buf@$BUF_VERSION into $BUF_DIR"
  mkdir -p "$BUF_DIR"
  # --no-save/--no-package-lock: the cache dir is not a project; exact pin, no ranges.
  npm install --silent --no-audit --no-fund --no-save --no-package-lock \
    --prefix "$BUF_DIR" "@bufbuild/buf@$BUF_VERSION" >&2
  [[ -x $BUF_BIN ]] || die "npm install finished but $BUF_BIN is missing"
fi

# buf.yaml (v2) sits at the repo root and names the module path `protos`; running from the
# root makes buf find it, so `buf.sh lint protos` lints that module with that config.
cd "$REPO_ROOT"
exec "$BUF_BIN" "$@"
