#!/usr/bin/env bash
# cluster.sh - a local 3-node RabbitMQ cluster for rabbitry's HA tests, built
# from the installed rabbitmq-server (3.10.8 here), beside the default node on
# 5672, which is never touched.
#
# Usage: scripts/cluster.sh start|kill NODE|restart NODE|stop|status|urls
#   start         start the three nodes and join them (idempotent)
#   kill N        kill -9 node N (1, 2 or 3): a node lost without goodbye
#   restart N     start node N again; it rejoins the cluster
#   stop          stop every node and delete the cluster's data
#   status        exit 0 when all three nodes run; print the cluster status
#   urls          print the AMQP URLs, comma-separated (for RABBITRY_CLUSTER_URLS)
#
# Node N is rabbitN@localhost, AMQP on 127.0.0.1:568N and [::1]:568N,
# distribution on 2568N, data under /var/tmp/rabbitry-cluster/rabbitN (owned
# by `rabbitmq`, since Debian's wrapper runs the node as that user). Needs
# root. Settings: RABBITRY_CLUSTER_DIR, RABBITRY_CLUSTER_TIMEOUT (seconds, 120).
set -euo pipefail

BASE=${RABBITRY_CLUSTER_DIR:-/var/tmp/rabbitry-cluster}
TIMEOUT=${RABBITRY_CLUSTER_TIMEOUT:-120}
NODES=(1 2 3)

log() { printf '[cluster %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the nodes run as the rabbitmq user)"

name() { echo "rabbit$1@localhost"; }
port() { echo $((5680 + $1)); }
dir() { echo "$BASE/rabbit$1"; }
pidfile() { echo "$(dir "$1")/rabbit.pid"; }

check_node() {
  case "${1:-}" in 1|2|3) ;; *) die "NODE must be 1, 2 or 3, got '${1:-}'" ;; esac
}

# The node's own environment: it must not read the default node's settings
# (/etc/rabbitmq/rabbitmq.conf listens on 5672).
node_env() {
  local n=$1 d
  d=$(dir "$n")
  echo env \
    RABBITMQ_NODENAME="$(name "$n")" \
    RABBITMQ_NODE_PORT="$(port "$n")" \
    RABBITMQ_DIST_PORT=$((25680 + n)) \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$(pidfile "$n")" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
}

ctl() {  # ctl N args...: rabbitmqctl against node N, bounded
  local n=$1; shift
  timeout $((TIMEOUT + 30)) rabbitmqctl -q -n "$(name "$n")" "$@"
}

node_pid() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

running() { ctl "$1" await_startup --timeout 1 >/dev/null 2>&1; }

prepare() {
  local n=$1 d
  d=$(dir "$n")
  mkdir -p "$d/mnesia" "$d/log"
  cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(port "$n")
listeners.tcp.2 = ::1:$(port "$n")
loopback_users = none
EOF
  echo "[]." >"$d/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$d"
}

start_node() {
  local n=$1
  if node_pid "$n" >/dev/null || running "$n"; then
    log "rabbit$n already running"
    return
  fi
  prepare "$n"
  rm -f "$(pidfile "$n")"  # stale after a kill -9
  log "starting rabbit$n on port $(port "$n")"
  # The node outlives this script: it must not inherit its caller's open
  # files (a lock a build holds, a test's pipes), or it keeps them open.
  # shellcheck disable=SC2046
  (
    for fd in $(ls /proc/$BASHPID/fd); do
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec </dev/null >/dev/null 2>&1
    exec $(node_env "$n") rabbitmq-server -detached
  )
}

await_node() {  # the node registers with epmd a moment after -detached returns
  local deadline=$((SECONDS + TIMEOUT))
  until ctl "$1" await_startup --timeout 10 >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "rabbit$1 did not boot within ${TIMEOUT}s; see $(dir "$1")/log"
    sleep 1
  done
}

joined() {  # is node N a member of rabbit1's cluster?
  ctl 1 cluster_status --formatter json 2>/dev/null | grep -q "\"$(name "$1")\""
}

start() {
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in 2 3; do
    if joined "$n"; then continue; fi
    log "joining rabbit$n to rabbit1"
    ctl "$n" stop_app
    ctl "$n" join_cluster "$(name 1)"
    ctl "$n" start_app
    await_node "$n"
  done
  log "cluster up: $(urls)"
}

kill_node() {
  local n=$1 pid
  pid=$(node_pid "$n") || { log "rabbit$n is not running"; return; }
  log "kill -9 rabbit$n (pid $pid)"
  kill -9 "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  die "rabbit$n (pid $pid) survived kill -9"
}

stop() {
  for n in "${NODES[@]}"; do
    # Ask even without a live pid file: a node started twice by accident
    # leaves the file naming the one that gave up.
    if node_pid "$n" >/dev/null || running "$n"; then
      log "stopping rabbit$n"
      ctl "$n" stop >/dev/null 2>&1 || true
    fi
  done
  for n in "${NODES[@]}"; do
    local pid
    if pid=$(node_pid "$n"); then
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && { log "rabbit$n still up; kill -9"; kill -9 "$pid" || true; }
    fi
  done
  # epmd keeps serving the default node: leave it alone.
  rm -rf "$BASE"
  log "cluster stopped and its data deleted"
}

status() {
  local ok=0
  for n in "${NODES[@]}"; do
    if running "$n"; then log "rabbit$n up (port $(port "$n"))"; else log "rabbit$n down"; ok=1; fi
  done
  for n in "${NODES[@]}"; do
    if running "$n"; then ctl "$n" cluster_status; break; fi
  done
  return $ok
}

urls() {
  local out=()
  for n in "${NODES[@]}"; do out+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"); done
  (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
  start) start ;;
  kill) check_node "${2:-}"; kill_node "$2" ;;
  restart) check_node "${2:-}"; start_node "$2"; await_node "$2" ;;
  stop) stop ;;
  status) status ;;
  urls) urls ;;
  *) die "usage: $0 start|kill NODE|restart NODE|stop|status|urls" ;;
esac
