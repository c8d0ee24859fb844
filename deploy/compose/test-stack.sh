#!/usr/bin/env bash
# `make test-compose`: the whole stack in a real Docker engine, then tests/compose against it.
#   1. engine (installed and started if missing: deploy/docker/engine.sh), images (make images);
#   2. fresh secrets (deploy/compose/secrets.sh into .build/compose-secrets: passwords, CA, certificates,
#      tokens), then `docker-compose --env-file …/compose.env up` of docker-compose.yml +
#      deploy/compose/local-images.yml + deploy/compose/test.yml (loopback only, no published ports), then
#      every container waited on to be healthy;
#   3. pytest tests/compose over TLS with tokens (submit + watch a digits job with the CLI, classify,
#      Prometheus `up`; a call without a token, with the wrong role, in plaintext are refused);
#   4. `docker-compose down -v`, also on failure.
# Any failure says why in one line; a container that never becomes healthy has its log tail printed.
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
COMPONENT=test-compose
HEALTHY_TIMEOUT=${CLASSFORGE_HEALTHY_TIMEOUT:-300}
export COMPOSE_PROJECT_NAME=classforge-test
export CLASSFORGE_COMPOSE_DATA="$REPO_ROOT/.build/compose-data"
SECRETS="$REPO_ROOT/.build/compose-secrets"
rm -rf "$SECRETS"  # every run gets new credentials: nothing of a previous run is trusted
"$REPO_ROOT/deploy/compose/secrets.sh" "$SECRETS" >/dev/null 2>&1 || die "deploy/compose/secrets.sh failed"
COMPOSE=(docker-compose --env-file "$SECRETS/compose.env" -f "$REPO_ROOT/docker-compose.yml" -f "$REPO_ROOT/deploy/compose/local-images.yml"
         -f "$REPO_ROOT/deploy/compose/test.yml")
PY="$REPO_ROOT/.venv/bin/python"
SERVICES=(jobs ingest tfrecords trainer evaluator inference tf-serving)

"$REPO_ROOT/deploy/docker/engine.sh" ensure || die "no Docker engine (see above)"
t0=$SECONDS
"$REPO_ROOT/deploy/docker/images.sh"
"$REPO_ROOT/deploy/docker/infra.sh"
log "images ready in $((SECONDS - t0)) s"

# show_log CONTAINER WHY: one line saying why, then the container's last log lines.
show_log() {
  log "$1 $2; its last log lines:"
  docker logs --tail 30 "$1" 2>&1 | sed 's/^/    /' >&2
}

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
    show_log "$(docker inspect -f '{{.Name}}' "$c" | tr -d /)" "is unhealthy"
  done
  die "docker-compose up failed"
}

# Every long-running container healthy; the one-shot *-init containers exit 0.
deadline=$((SECONDS + HEALTHY_TIMEOUT))
while :; do
  waiting=()
  for c in $("${COMPOSE[@]}" ps -q); do
    read -r name service state health exit_code < <(docker inspect -f '{{.Name}} {{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$c")
    name=${name#/}
    if [[ $service == *-init && $state == exited && $exit_code == 0 ]]; then continue; fi
    if [[ $state == exited || $state == dead ]]; then
      show_log "$name" "exited ($exit_code)"
      die "$name exited during start-up"
    fi
    [[ $health == healthy ]] || waiting+=("$name")
  done
  ((${#waiting[@]} == 0)) && break
  if ((SECONDS > deadline)); then
    for name in "${waiting[@]}"; do
      show_log "$name" "not healthy after ${HEALTHY_TIMEOUT}s"
    done
    die "services never became healthy: ${waiting[*]}"
  fi
  sleep 2
done
log "stack healthy $((SECONDS - t1)) s after up"

t2=$SECONDS
rc=0
# The tests are clients on the host: the stack's CA, the operator's tokens (tests/compose/test_stack.py).
(cd "$REPO_ROOT" && set -a && source "$SECRETS/operator.env" && set +a &&
 CLASSFORGE_TOKEN=$CLASSFORGE_TOKEN_SUBMITTER "$PY" -m pytest -p no:cacheprovider tests/compose -m compose "$@") || rc=$?
log "tests/compose finished in $((SECONDS - t2)) s (exit $rc)"
if ((rc)); then
  for service in "${SERVICES[@]}"; do
    log "last log lines of $service:"; "${COMPOSE[@]}" logs --tail 15 "$service" 2>&1 | sed 's/^/    /' >&2
  done
  exit $rc
fi

# `docker stop` (SIGTERM, then KILL after the grace period) must end every service cleanly: exit 0
# within its stop_grace_period (a KILL would show as 137).
t3=$SECONDS
"${COMPOSE[@]}" stop "${SERVICES[@]}" >/dev/null 2>&1
bad=()
for service in "${SERVICES[@]}"; do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$("${COMPOSE[@]}" ps -q "$service")")
  [[ $code == 0 ]] || bad+=("$service=$code")
done
((${#bad[@]} == 0)) || die "docker stop did not end these with exit 0: ${bad[*]}"
log "docker stop ended every service with exit 0 in $((SECONDS - t3)) s"
