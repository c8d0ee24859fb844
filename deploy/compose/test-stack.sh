#!/usr/bin/env bash
# `make test-compose`: the whole stack in a real Docker engine, then tests/compose against it.
#   1. engine (installed and started if missing: deploy/docker/engine.sh), images (make images);
#   2. `docker-compose up` of docker-compose.yml + deploy/compose/local-images.yml + deploy/compose/test.yml
#      (loopback only, no published ports), then every container waited on to be healthy;
#   3. pytest tests/compose (submit + watch a digits job with the CLI, classify, Prometheus `up`);
#   4. `docker-compose down -v`, also on failure.
# Any failure says why in one line; a container that never becomes healthy has its log tail printed.
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
COMPONENT=test-compose
HEALTHY_TIMEOUT=${CLASSFORGE_HEALTHY_TIMEOUT:-300}
export COMPOSE_PROJECT_NAME=classforge-test
export CLASSFORGE_COMPOSE_DATA="$REPO_ROOT/.build/compose-data"
COMPOSE=(docker-compose -f "$REPO_ROOT/docker-compose.yml" -f "$REPO_ROOT/deploy/compose/local-images.yml"
         -f "$REPO_ROOT/deploy/compose/test.yml")
PY="$REPO_ROOT/.venv/bin/python"

"$REPO_ROOT/deploy/docker/engine.sh" ensure || die "no Docker engine (see above)"
t0=$SECONDS
"$REPO_ROOT/deploy/docker/images.sh"
"$REPO_ROOT/deploy/docker/infra.sh"
log "images ready in $((SECONDS - t0)) s"

down() {
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || log "docker-compose down failed"
}
trap down EXIT
down  # a stack left over by an interrupted run
rm -rf "$CLASSFORGE_COMPOSE_DATA" && mkdir -p "$CLASSFORGE_COMPOSE_DATA"

t1=$SECONDS
"${COMPOSE[@]}" up -d >/tmp/classforge-compose-up.log 2>&1 || {
  tail -n 20 /tmp/classforge-compose-up.log >&2
  for c in $("${COMPOSE[@]}" ps -q); do
    [[ $(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null) == unhealthy ]] || continue
    log "$(docker inspect -f '{{.Name}}' "$c") is unhealthy; its last log lines:"
    docker logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2
  done
  die "docker-compose up failed"
}

# Every long-running container healthy (one-shot init containers exit 0).
deadline=$((SECONDS + HEALTHY_TIMEOUT))
while :; do
  waiting=()
  for c in $("${COMPOSE[@]}" ps -q); do
    read -r name state health exit_code < <(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$c")
    name=${name#/}
    if [[ $state == exited && $health == none && $exit_code == 0 ]]; then continue; fi
    if [[ $state == exited || $state == dead ]]; then
      log "$name exited ($exit_code); its last log lines:"; docker logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2
      die "$name exited during start-up"
    fi
    [[ $health == healthy ]] || waiting+=("$name")
  done
  ((${#waiting[@]} == 0)) && break
  if ((SECONDS > deadline)); then
    for name in "${waiting[@]}"; do
      log "$name not healthy after ${HEALTHY_TIMEOUT}s; its last log lines:"
      docker logs --tail 30 "$name" 2>&1 | sed 's/^/    /' >&2
    done
    die "services never became healthy: ${waiting[*]}"
  fi
  sleep 2
done
log "stack healthy $((SECONDS - t1)) s after up"

t2=$SECONDS
rc=0
(cd "$REPO_ROOT" && "$PY" -m pytest -p no:cacheprovider tests/compose -m compose "$@") || rc=$?
log "tests/compose finished in $((SECONDS - t2)) s (exit $rc)"
if ((rc)); then
  for service in jobs ingest tfrecords trainer evaluator inference; do
    log "last log lines of $service:"; "${COMPOSE[@]}" logs --tail 15 "$service" 2>&1 | sed 's/^/    /' >&2
  done
fi
exit $rc
