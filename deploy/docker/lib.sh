# shellcheck shell=bash
# Helpers shared by the deploy/docker scripts (images.sh, infra.sh). Sourced, never executed; brings
# in deploy/local/lib.sh (log, die, CACHE, REPO_ROOT, ...).
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
DOCKER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The classic builder: BuildKit needs the buildx plugin, which Debian's docker.io does not ship.
export DOCKER_BUILDKIT=0

# build_target DOCKERFILE CONTEXT TARGET IMAGE: one `docker build --target`, with --network host (the
# only network the test engine has). On failure: the build log's tail, and exit.
build_target() {
  local dockerfile=$1 context=$2 target=$3 image=$4 t0=$SECONDS
  local build_log="/tmp/classforge-build-$target.log"
  if ! docker build --network host -q -f "$dockerfile" --target "$target" -t "$image" "$context" >"$build_log" 2>&1; then
    tail -n 20 "$build_log" >&2
    die "building $image failed (log: $build_log)"
  fi
  log "$image built in $((SECONDS - t0)) s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}
