#!/usr/bin/env bash
# Keybrake bench (npm run bench). See bench/README.md for what each part measures.
#
#   npm run bench                  full run (~6 min): 3 interleaved rounds, 8 s per run
#   BENCH_SMOKE=1 npm run bench    CI-sized (~1 min): 1 round, 2 s per run, 100k audit rows
#
# Servers run on one core (BENCH_SERVER_CPU, default 1), load generators on the
# other (BENCH_LOAD_CPU, default 0). Everything listens on 127.0.0.1 only.
# Every process started here is killed by pid on exit, error or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${BENCH_SMOKE:-0}
SERVER_CPU=${BENCH_SERVER_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
PORT_BASE=${BENCH_PORT_BASE:-18400}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench/results}
export BENCH_SMOKE=$SMOKE BENCH_SERVER_CPU=$SERVER_CPU BENCH_LOAD_CPU=$LOAD_CPU BENCH_RESULTS_DIR=$RESULTS_DIR BENCH_PORT_BASE=$PORT_BASE

# Ports (all loopback).
VENDOR_PORT=$((PORT_BASE + 1))            # nginx fake vendor
SLOW_VENDOR_PORT=$((PORT_BASE + 2))       # Bun fake vendor, 50 ms
NGINX_PROXY_PORT=$((PORT_BASE + 3))
NGINX_PROXY_SLOW_PORT=$((PORT_BASE + 4))
HTTP_PROXY_PORT=$((PORT_BASE + 5))
HTTP_PROXY_SLOW_PORT=$((PORT_BASE + 6))
KEYBRAKE_PORT=$((PORT_BASE + 7))
KEYBRAKE_SLOW_PORT=$((PORT_BASE + 8))
BUN_PROXY_PORT=$((PORT_BASE + 9))
BUN_PROXY_SLOW_PORT=$((PORT_BASE + 14))
KEYBRAKE_PG_PORT=$((PORT_BASE + 15))      # Keybrake on PostgreSQL, one replica
KEYBRAKE_PG_A_PORT=$((PORT_BASE + 16))    # two replicas on another database of the same cluster …
KEYBRAKE_PG_B_PORT=$((PORT_BASE + 17))
KEYBRAKE_PG_PAIR_PORT=$((PORT_BASE + 18)) # … behind nginx, round robin
KEYBRAKE_PG_SLOW_PORT=$((PORT_BASE + 22))  # the same three in front of the 50 ms vendor
KEYBRAKE_PG_SLOW_A_PORT=$((PORT_BASE + 23))
KEYBRAKE_PG_SLOW_B_PORT=$((PORT_BASE + 24))
KEYBRAKE_PG_SLOW_PAIR_PORT=$((PORT_BASE + 25))
# contention.ts uses PORT_BASE+10..+13, +19 and +28, audit-scale.ts PORT_BASE+20..+21 and +26..+27.

RUN_DIR=$(mktemp -d /tmp/keybrake-bench.XXXXXX)
PIDS=()     # servers started by start()
PART_PID="" # the bench part (load/contention/audit-scale) now running

log() { printf '\n== %s\n' "$*"; }
die() { echo "bench: $*" >&2; exit 1; }

# stop_pids PID... — SIGTERM, a bounded wait (5 s), then SIGKILL for any left.
stop_pids() {
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    local alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

# Stops every server started here, by pid.
stop_servers() {
  stop_pids "${PIDS[@]}"
  PIDS=()
}

cleanup() {
  local status=$?
  # A bench part still running (interrupted): it stops its own children on SIGTERM.
  if [ -n "$PART_PID" ]; then stop_pids "$PART_PID"; fi
  stop_servers
  if [ "$status" -ne 0 ] && [ -d "$RUN_DIR" ]; then
    echo "bench: failed (exit $status); last server log lines:" >&2
    tail -n 5 "$RUN_DIR"/*.log 2>/dev/null >&2 || true
  fi
  rm -rf "$RUN_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

require_tools() {
  local missing=()
  for t in nginx wrk taskset curl; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: apt-get install -y nginx wrk util-linux curl"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "${KEYBRAKE_PG_BIN:-}" ] || die "PostgreSQL server binaries are missing: apt-get install -y postgresql"
  [ -f node_modules/http-proxy/package.json ] || die "http-proxy is not installed: npm install"
  [ "$(nproc)" -ge 2 ] || echo "bench: warning: fewer than 2 cores; servers and wrk will share one" >&2
}

# Bun from the npm dependency (no npx start-up cost in the hot loop).
if [ -x node_modules/.bin/bun ]; then BUN=$ROOT/node_modules/.bin/bun; else BUN="npx bun"; fi

build_if_missing() {
  if [ -n "${BENCH_KEYBRAKE_CMD:-}" ]; then
    echo "keybrake: BENCH_KEYBRAKE_CMD=$BENCH_KEYBRAKE_CMD"
  elif [ ! -x dist/keybrake ] || [ "${BENCH_REBUILD:-0}" = 1 ]; then
    log "building dist/keybrake"
    npm run build --silent
  else
    echo "keybrake: using existing dist/keybrake ($(date -r dist/keybrake '+%F %T'); BENCH_REBUILD=1 to rebuild)"
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME CMD... — runs CMD on the server core; taskset execs, so $! is the server's pid.
start() {
  local name=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_http NAME URL — bounded: 10 s.
wait_http() {
  local name=$1 url=$2
  for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  cat "$RUN_DIR/$name.log" >&2 || true
  die "$name did not come up at $url"
}

render_nginx_conf() {
  sed -e "s#@RUN_DIR@#$RUN_DIR#g" \
      -e "s#@VENDOR_PORT@#$VENDOR_PORT#g" \
      -e "s#@SLOW_VENDOR_PORT@#$SLOW_VENDOR_PORT#g" \
      -e "s#@NGINX_PROXY_PORT@#$NGINX_PROXY_PORT#g" \
      -e "s#@NGINX_PROXY_SLOW_PORT@#$NGINX_PROXY_SLOW_PORT#g" \
      -e "s#@KEYBRAKE_PG_A_PORT@#$KEYBRAKE_PG_A_PORT#g" \
      -e "s#@KEYBRAKE_PG_B_PORT@#$KEYBRAKE_PG_B_PORT#g" \
      -e "s#@KEYBRAKE_PG_PAIR_PORT@#$KEYBRAKE_PG_PAIR_PORT#g" \
      -e "s#@KEYBRAKE_PG_SLOW_A_PORT@#$KEYBRAKE_PG_SLOW_A_PORT#g" \
      -e "s#@KEYBRAKE_PG_SLOW_B_PORT@#$KEYBRAKE_PG_SLOW_B_PORT#g" \
      -e "s#@KEYBRAKE_PG_SLOW_PAIR_PORT@#$KEYBRAKE_PG_SLOW_PAIR_PORT#g" \
      "bench/$1" >"$RUN_DIR/$1"
}

start_servers() {
  log "starting servers on core $SERVER_CPU (run dir $RUN_DIR)"
  for p in $(seq $((PORT_BASE + 1)) $((PORT_BASE + 9))) $(seq "$BUN_PROXY_SLOW_PORT" "$KEYBRAKE_PG_PAIR_PORT") $(seq "$KEYBRAKE_PG_SLOW_PORT" "$KEYBRAKE_PG_SLOW_PAIR_PORT"); do
    port_free "$p" || die "port $p is in use; set BENCH_PORT_BASE"
  done
  mkdir -p "$RUN_DIR"/nginx-vendor-tmp "$RUN_DIR"/nginx-proxy-tmp
  chmod 755 "$RUN_DIR" # nginx workers run as nobody and need to reach their temp dirs
  render_nginx_conf nginx-vendor.conf
  render_nginx_conf nginx-proxy.conf

  # Fake vendors: nginx (fast, counts via stub_status) and Bun (50 ms, counts itself).
  start nginx-vendor nginx -p "$RUN_DIR" -c "$RUN_DIR/nginx-vendor.conf"
  start slow-vendor $BUN bench/fake-vendor.ts "$SLOW_VENDOR_PORT" 50
  wait_http nginx-vendor "http://127.0.0.1:$VENDOR_PORT/__nginx_status"
  wait_http slow-vendor "http://127.0.0.1:$SLOW_VENDOR_PORT/__count"

  # Plain proxies, no ledger.
  start nginx-proxy nginx -p "$RUN_DIR" -c "$RUN_DIR/nginx-proxy.conf"
  start http-proxy node bench/node-proxy.cjs "$HTTP_PROXY_PORT" "http://127.0.0.1:$VENDOR_PORT"
  start http-proxy-slow node bench/node-proxy.cjs "$HTTP_PROXY_SLOW_PORT" "http://127.0.0.1:$SLOW_VENDOR_PORT"
  # The Bun floor: Bun.serve + fetch and nothing else, to tell Bun's cost from Keybrake's.
  start bun-proxy $BUN bench/bun-proxy.ts "$BUN_PROXY_PORT" "http://127.0.0.1:$VENDOR_PORT"
  start bun-proxy-slow $BUN bench/bun-proxy.ts "$BUN_PROXY_SLOW_PORT" "http://127.0.0.1:$SLOW_VENDOR_PORT"

  # Keybrake, one per fake vendor (the upstream base URL is per process).
  start_keybrake keybrake "$KEYBRAKE_PORT" "$RUN_DIR/kb-data" "http://127.0.0.1:$VENDOR_PORT"
  start_keybrake keybrake-slow "$KEYBRAKE_SLOW_PORT" "$RUN_DIR/kb-slow-data" "http://127.0.0.1:$SLOW_VENDOR_PORT"

  # Keybrake on PostgreSQL: a throwaway cluster on the server core (it is a server, as SQLite is
  # inside the SQLite Keybrake), one database for the single replica and one for the pair.
  start pg-cluster $BUN bench/pg-cluster.ts kb1 kb2
  for _ in $(seq 300); do grep -qx ready "$RUN_DIR/pg-cluster.log" && break; sleep 0.1; done
  grep -qx ready "$RUN_DIR/pg-cluster.log" || { cat "$RUN_DIR/pg-cluster.log" >&2; die "the PostgreSQL cluster did not start within 30 s"; }
  PG_URL_1=$(awk '$1 == "kb1" { print $2 }' "$RUN_DIR/pg-cluster.log")
  PG_URL_2=$(awk '$1 == "kb2" { print $2 }' "$RUN_DIR/pg-cluster.log")
  start_pg_keybrakes pg "http://127.0.0.1:$VENDOR_PORT" "$KEYBRAKE_PG_PORT" "$KEYBRAKE_PG_A_PORT" "$KEYBRAKE_PG_B_PORT"
  start_pg_keybrakes pg-slow "http://127.0.0.1:$SLOW_VENDOR_PORT" "$KEYBRAKE_PG_SLOW_PORT" "$KEYBRAKE_PG_SLOW_A_PORT" "$KEYBRAKE_PG_SLOW_B_PORT"

  wait_http nginx-proxy "http://127.0.0.1:$NGINX_PROXY_PORT/"
  wait_http http-proxy "http://127.0.0.1:$HTTP_PROXY_PORT/"
  wait_http http-proxy-slow "http://127.0.0.1:$HTTP_PROXY_SLOW_PORT/"
  wait_http bun-proxy "http://127.0.0.1:$BUN_PROXY_PORT/"
  wait_http bun-proxy-slow "http://127.0.0.1:$BUN_PROXY_SLOW_PORT/"
  wait_http keybrake "http://127.0.0.1:$KEYBRAKE_PORT/healthz"
  wait_http keybrake-slow "http://127.0.0.1:$KEYBRAKE_SLOW_PORT/healthz"
  wait_http keybrake-pg "http://127.0.0.1:$KEYBRAKE_PG_PORT/healthz"
  wait_http keybrake-pg-a "http://127.0.0.1:$KEYBRAKE_PG_A_PORT/healthz"
  wait_http keybrake-pg-b "http://127.0.0.1:$KEYBRAKE_PG_B_PORT/healthz"
  wait_http keybrake-pg-pair "http://127.0.0.1:$KEYBRAKE_PG_PAIR_PORT/healthz"
  wait_http keybrake-pg-slow "http://127.0.0.1:$KEYBRAKE_PG_SLOW_PORT/healthz"
  wait_http keybrake-pg-slow-a "http://127.0.0.1:$KEYBRAKE_PG_SLOW_A_PORT/healthz"
  wait_http keybrake-pg-slow-b "http://127.0.0.1:$KEYBRAKE_PG_SLOW_B_PORT/healthz"
  wait_http keybrake-pg-slow-pair "http://127.0.0.1:$KEYBRAKE_PG_SLOW_PAIR_PORT/healthz"
}

# start_pg_keybrakes NAME UPSTREAM PORT PORT_A PORT_B — one replica on database kb1 and a pair on kb2
# (nginx balances the pair). Replicas migrate one at a time by themselves (an advisory lock).
start_pg_keybrakes() {
  local name=$1 upstream=$2
  start_keybrake "keybrake-$name" "$3" "$RUN_DIR/kb-$name-data" "$upstream" KEYBRAKE_DATABASE_URL="$PG_URL_1" KEYBRAKE_MASTER_KEY="$PG_MASTER_KEY"
  start_keybrake "keybrake-$name-a" "$4" "$RUN_DIR/kb-$name-a-data" "$upstream" KEYBRAKE_DATABASE_URL="$PG_URL_2" KEYBRAKE_MASTER_KEY="$PG_MASTER_KEY"
  start_keybrake "keybrake-$name-b" "$5" "$RUN_DIR/kb-$name-b-data" "$upstream" KEYBRAKE_DATABASE_URL="$PG_URL_2" KEYBRAKE_MASTER_KEY="$PG_MASTER_KEY"
}

# start_keybrake NAME PORT DATA_DIR UPSTREAM [VAR=VALUE…] — the extra variables pick another backend.
start_keybrake() {
  local name=$1 port=$2 data=$3 upstream=$4
  shift 4
  local cmd
  read -r -a cmd <<<"${BENCH_KEYBRAKE_CMD:-$ROOT/dist/keybrake serve}"
  start "$name" env \
    KEYBRAKE_PORT="$port" KEYBRAKE_HOST=127.0.0.1 KEYBRAKE_DATA_DIR="$data" \
    KEYBRAKE_ADMIN_TOKEN=kbt_bench_admin_token_0123456789abcdef \
    KEYBRAKE_STRIPE_BASE_URL="$upstream" KEYBRAKE_STRIPE_SECRET_KEY=sk_test_bench_realsecret_51Hxxxxxxxxxxxxxxxxxx \
    KEYBRAKE_LOG=silent "$@" "${cmd[@]}"
}
# Every replica of one database needs the same master key (it encrypts the stored vendor secrets).
PG_MASTER_KEY=kbm_bench_master_key_0123456789abcdef0123456789

# Runs one bench part on the load core; remembers a failure but carries on, so
# one failing part still leaves the others' numbers in the report.
FAILED=()
part() {
  local name=$1; shift
  log "$name"
  # In the background plus `wait`, so Ctrl-C or SIGTERM reaches the trap at once
  # (bash defers traps until a foreground child exits) and cleanup can stop the part.
  taskset -c "$LOAD_CPU" "$@" &
  PART_PID=$!
  wait "$PART_PID" || FAILED+=("$name")
  PART_PID=""
}

main() {
  require_tools
  build_if_missing
  mkdir -p "$RESULTS_DIR"
  rm -f "$RESULTS_DIR"/*.json # never report numbers from an earlier run
  start_servers

  export VENDOR_URL=http://127.0.0.1:$VENDOR_PORT
  export SLOW_VENDOR_URL=http://127.0.0.1:$SLOW_VENDOR_PORT
  export NGINX_PROXY_URL=http://127.0.0.1:$NGINX_PROXY_PORT
  export NGINX_PROXY_SLOW_URL=http://127.0.0.1:$NGINX_PROXY_SLOW_PORT
  export HTTP_PROXY_URL=http://127.0.0.1:$HTTP_PROXY_PORT
  export HTTP_PROXY_SLOW_URL=http://127.0.0.1:$HTTP_PROXY_SLOW_PORT
  export BUN_PROXY_URL=http://127.0.0.1:$BUN_PROXY_PORT
  export BUN_PROXY_SLOW_URL=http://127.0.0.1:$BUN_PROXY_SLOW_PORT
  export KEYBRAKE_URL=http://127.0.0.1:$KEYBRAKE_PORT KEYBRAKE_DATA_DIR=$RUN_DIR/kb-data
  export KEYBRAKE_SLOW_URL=http://127.0.0.1:$KEYBRAKE_SLOW_PORT KEYBRAKE_SLOW_DATA_DIR=$RUN_DIR/kb-slow-data
  export KEYBRAKE_PG_URL=http://127.0.0.1:$KEYBRAKE_PG_PORT KEYBRAKE_PG_DATABASE_URL=$PG_URL_1
  export KEYBRAKE_PG_PAIR_URL=http://127.0.0.1:$KEYBRAKE_PG_PAIR_PORT KEYBRAKE_PG_PAIR_DATABASE_URL=$PG_URL_2
  export KEYBRAKE_PG_REPLICA_URLS="http://127.0.0.1:$KEYBRAKE_PG_A_PORT http://127.0.0.1:$KEYBRAKE_PG_B_PORT"
  export KEYBRAKE_PG_SLOW_URL=http://127.0.0.1:$KEYBRAKE_PG_SLOW_PORT KEYBRAKE_PG_SLOW_PAIR_URL=http://127.0.0.1:$KEYBRAKE_PG_SLOW_PAIR_PORT
  export KEYBRAKE_PG_SLOW_REPLICA_URLS="http://127.0.0.1:$KEYBRAKE_PG_SLOW_A_PORT http://127.0.0.1:$KEYBRAKE_PG_SLOW_B_PORT"
  export BENCH_RUN_DIR=$RUN_DIR

  part "load (interleaved wrk rounds)" $BUN bench/load.ts

  # The shared servers are not needed any more: free the server core.
  stop_servers

  # fetch() in Bun caps concurrent requests at 256 by default; contention wants all 1,000 at once.
  part "contention (1,000 concurrent calls, cap allows 100)" env BUN_CONFIG_MAX_HTTP_REQUESTS=1024 $BUN bench/contention.ts
  part "audit scale (RSS and label query among many audit rows)" $BUN bench/audit-scale.ts
  # The ledger on each backend (SPEC §8): SQLite ×1, PostgreSQL ×1 and ×2 replicas, with ledger checks.
  part "ledger backends (SQLite, PostgreSQL ×1 and ×2 replicas)" $BUN bench/ledger-backends.ts

  log "report"
  local report_status=0
  $BUN bench/report.ts || report_status=$?
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo "bench: FAILED parts: ${FAILED[*]}" >&2
    exit 1
  fi
  exit "$report_status"
}

main "$@"
