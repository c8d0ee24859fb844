# shellcheck shell=bash disable=SC2034  # (variables here are used by the scripts that source it)
# Shared helpers for the deploy/local scripts. Sourced, never executed.
# Everything installed is cached outside the repo (reused across clones and `rm -rf .infra`);
# everything a run writes (data, logs, pids, generated credentials) goes under .infra/ in the repo
# root (git-ignored), or under $CLASSFORGE_INFRA_DIR.
#
# Overridable, so that a test can run a second instance beside the shared one (defaults in brackets):
#   CLASSFORGE_INFRA_DIR                    state directory [.infra]
#   CLASSFORGE_INFRA_KAFKA_PORT             Kafka client listener [19092]
#   CLASSFORGE_INFRA_KAFKA_CONTROLLER_PORT  KRaft controller listener [19093]
#   CLASSFORGE_INFRA_KAFKA_SASL_PORT        Kafka SASL_SSL (SCRAM-SHA-512) listener, TLS mode only [19094]
#   CLASSFORGE_INFRA_MINIO_PORT             MinIO S3 API [19000]
#   CLASSFORGE_INFRA_MINIO_CONSOLE_PORT     MinIO console [19001]
#   CLASSFORGE_INFRA_PROMETHEUS_PORT        Prometheus [19090]
#   CLASSFORGE_INFRA_PROMETHEUS_CONFIG      Prometheus scrape configuration [deploy/local/prometheus.yml]
#   CLASSFORGE_INFRA_TLS_DIR                TLS mode: a directory with ca.pem, server.pem (the server's
#                                           certificate chain) and server.key; every listener then
#                                           speaks TLS only [unset: plaintext]

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
CACHE="${CLASSFORGE_CACHE:-$HOME/.cache/classforge}"
INFRA="${CLASSFORGE_INFRA_DIR:-$REPO_ROOT/.infra}"
[[ $INFRA == /* ]] || INFRA="$PWD/$INFRA"
TLS_DIR="${CLASSFORGE_INFRA_TLS_DIR:-}"
[[ -z $TLS_DIR || $TLS_DIR == /* ]] || TLS_DIR="$PWD/$TLS_DIR"
CREDENTIALS="$INFRA/credentials.env"
READY_TIMEOUT="${CLASSFORGE_READY_TIMEOUT:-120}"   # seconds to wait for a component to be ready
STOP_TIMEOUT="${CLASSFORGE_STOP_TIMEOUT:-30}"      # seconds between TERM and KILL

log() { printf '[%s] %s\n' "${COMPONENT:-infra}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive PIDFILE: true when the pid file names a live process. A stale pid file
# (process gone, or the pid reused by something that is not ours) is removed. Every process these
# scripts start names a path under the state directory on its command line.
pid_alive() {
  local pidfile=$1 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ $(cmdline_of "$pid") == *"$INFRA"* ]]; then
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

# cmdline_of PID: the process's command line, NULs as spaces. While a process is inside
# execve (nohup -> setsid -> java, just after start_bg) /proc/PID/cmdline reads empty for a
# moment; a read then must not count as "not ours", so an empty read is retried for up to 2 s.
cmdline_of() {
  local pid=$1 cmd="" i
  for ((i = 0; i < 20; i++)); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 0   # gone
    [[ -n $cmd ]] && break
    sleep 0.1
  done
  printf '%s' "$cmd"
}

# port_open PORT: a TCP connect to 127.0.0.1:PORT succeeds.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_bg PIDFILE LOGFILE CMD...: run CMD detached in its own session (so the caller's
# Ctrl-C or end of `make` does not take it down) and record its pid.
start_bg() {
  local pidfile=$1 logfile=$2; shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  # setsid makes the process a group leader, so `down` can signal the whole group.
  nohup setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# wait_ready NAME LOGFILE PIDFILE CHECK...: poll CHECK once a second until it succeeds,
# the process dies, or READY_TIMEOUT passes; on failure print the log tail and return 1.
wait_ready() {
  local name=$1 logfile=$2 pidfile=$3; shift 3
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_alive "$pidfile"; then
      log "$name exited during start-up; last lines of $logfile:"
      tail -n 40 "$logfile" >&2 || true
      return 1
    fi
    sleep 1
  done
  log "$name not ready after ${READY_TIMEOUT}s; last lines of $logfile:"
  tail -n 40 "$logfile" >&2 || true
  return 1
}

# stop_pid NAME PIDFILE: TERM the process group, KILL it after STOP_TIMEOUT. Succeeds
# when nothing is running.
stop_pid() {
  local name=$1 pidfile=$2 pid i
  if ! pid_alive "$pidfile"; then
    log "$name not running"
    return 0
  fi
  pid=$(<"$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop within ${STOP_TIMEOUT}s; sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidfile"
  log "$name stopped"
}

# status_line NAME STATE VERSION ADDRESS: the one-line format of `infra.sh status`.
status_line() { printf '%-11s %-5s %-46s %s\n' "$1" "$2" "$3" "$4"; }

# as_root CMD...: run CMD as root (directly, or through sudo when we are not root).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# apt_install PKG...: install Debian packages; refresh the package lists only when the
# first attempt fails (the lists may be missing or stale on a fresh machine).
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" >&2; then
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "$@" >&2
  fi
}

# find_own PATTERN: pids of processes whose command line contains PATTERN (a path under
# .infra/, so it only ever matches processes these scripts started from this checkout).
# pgrep takes a regex, so the path's special characters are escaped first.
# shellcheck disable=SC2001  # a character class; ${var//} cannot do this
regex_quote() { sed 's/[][\.*^$+?(){}|]/\\&/g' <<<"$1"; }
find_own() { pgrep -f -- "$(regex_quote "$1")" || true; }

# adopt_or_clear NAME PIDFILE PATTERN: if the pid file is stale but a process of ours is still
# running (pid file deleted by hand, or a crash between start and write), adopt it.
adopt_or_clear() {
  local name=$1 pidfile=$2 pattern=$3 pids
  pid_alive "$pidfile" && return 0
  pids=$(find_own "$pattern")
  [[ -z $pids ]] && return 1
  # The oldest one is the leader of what we started.
  pids=$(pgrep -o -f -- "$(regex_quote "$pattern")")
  log "found running $name (pid $pids) without a valid pid file; adopting it"
  mkdir -p "$(dirname "$pidfile")"
  echo "$pids" >"$pidfile"
}

# component_main ACTION: the command line every component script (kafka.sh, minio.sh,
# prometheus.sh) shares; each defines install, start, wait_up, down and status.
component_main() {
  case "${1:-}" in
    install) install ;;
    start) start ;;
    wait) wait_up ;;
    up) start && wait_up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 install|start|wait|up|down|status" >&2; exit 2 ;;
  esac
}

# TLS mode (CLASSFORGE_INFRA_TLS_DIR): check_tls_dir dies unless the three PEM files are there.
tls_on() { [[ -n $TLS_DIR ]]; }
check_tls_dir() {
  local f
  for f in ca.pem server.pem server.key; do
    [[ -r $TLS_DIR/$f ]] || die "CLASSFORGE_INFRA_TLS_DIR=$TLS_DIR has no readable $f (needs ca.pem, server.pem, server.key)"
  done
}
# curl_tls: curl that trusts the TLS mode's CA; the scheme the probes use.
curl_tls() { if tls_on; then curl --cacert "$TLS_DIR/ca.pem" "$@"; else curl "$@"; fi; }
scheme() { if tls_on; then echo https; else echo http; fi; }

# ensure_credentials: the local instance's generated credentials, made once per state directory into
# $CREDENTIALS (mode 0600, git-ignored with .infra/), never a default: the MinIO root user and password
# (clients use them as CLASSFORGE_S3_ACCESS_KEY/SECRET_KEY) and, for TLS mode's SASL_SSL listener, a
# SCRAM user and password. The file is made aside and hard-linked into place, so two scripts starting
# at once agree on one set.
random_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ensure_credentials() {
  [[ -s $CREDENTIALS ]] && return 0
  mkdir -p "$INFRA"
  local tmp="$CREDENTIALS.tmp.$$" user_suffix
  user_suffix=$(random_secret)
  (
    umask 077
    cat >"$tmp" <<CREDS
# Generated by deploy/local on $(date -u +%Y-%m-%dT%H:%M:%SZ) for this state directory only. Remove the
# state directory (not just this file) to start over: MinIO's data is bound to its root credentials.
CLASSFORGE_S3_ACCESS_KEY=classforge-${user_suffix:0:8}
CLASSFORGE_S3_SECRET_KEY=$(random_secret)
CLASSFORGE_KAFKA_SASL_USERNAME=classforge
CLASSFORGE_KAFKA_SASL_PASSWORD=$(random_secret)
CREDS
  )
  ln "$tmp" "$CREDENTIALS" 2>/dev/null || true   # someone else's won: keep theirs
  rm -f "$tmp"
  log "generated credentials into $CREDENTIALS"
}

# credential NAME: one value from $CREDENTIALS.
credential() { sed -n "s/^$1=//p" "$CREDENTIALS" | tail -1; }

# fresh_data_for DATADIR STAMPFILE SECRET...: data made under other credentials cannot be used with
# these (MinIO keeps its IAM state encrypted with the root credentials; Kafka keeps the SCRAM users
# added when the storage was formatted), so a data dir whose stamp does not match the credentials is
# removed and made again. Local data is disposable test state; a data dir from before credentials were
# generated has no stamp and is therefore replaced once.
fresh_data_for() {
  local datadir=$1 stampfile=$2 want; shift 2
  want=$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)
  if [[ -d $datadir && $(cat "$stampfile" 2>/dev/null) != "$want" ]]; then
    log "$datadir was made with other credentials; removing it (local data is disposable)"
    rm -rf "$datadir"
  fi
  mkdir -p "$datadir" "$(dirname "$stampfile")"
  echo "$want" >"$stampfile"
}
