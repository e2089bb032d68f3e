#!/usr/bin/env bash
# The admin API under load: with N idle connections held by a separate load process, the latency
# of each admin request (200 of each, one after another: p50 and p99), and whether listings that
# read TCP_INFO of every connection slow the data path (ack round trips of a one-item window,
# measured without and then with a listing loop running beside them).
#
# usage: bench/admin_latency.sh [N]   N idle connections (default 15000; one process may hold at
#                                     most ~19,000 here: RLIMIT_NOFILE is 20,000)
# env:   REQUESTS (200)  requests per endpoint
#        OUT (bench/results/admin-<time>)  logs and summary.txt
#        SERVE_ARGS ("")  more flags for serve; --keepalive-idle 1s makes every connection one
#                         whose TCP_INFO /metrics reads (the worst case: all silent past it).
#                         Add --keepalive-interval 60s --keepalive-count 9: 15,000 probes at once
#                         overflow loopback's backlog (docs/OPERATIONS.md), and with the default
#                         interval and count healthy connections would close during the run
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-15000}
REQUESTS=${REQUESTS:-200}
OUT=${OUT:-$ROOT/bench/results/admin-$(date +%Y%m%d-%H%M%S)}
PORT=7720
ADMIN=127.0.0.1:7721
CW=$ROOT/target/release/connwarden
source "$ROOT/bench/lib.sh"
prepare_release
serve_with_idle_load "$N" "$PORT" "$ADMIN"
sleep 2
log "machine: $(nproc) cores, kernel $(uname -r); $(established $PORT) idle connections; $REQUESTS requests per endpoint; serve ${SERVE_ARGS:-(defaults)}; results in $OUT"

# time PATH: prints "p50 p99" in milliseconds of REQUESTS sequential requests
time_path() {
  local path=$1 i
  for i in $(seq 1 "$REQUESTS"); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://$ADMIN$path"
  done | awk '{print $1 * 1000}' >"$OUT/times.txt"
  echo "$(pct 50 <"$OUT/times.txt") $(pct 99 <"$OUT/times.txt")"
}
for path in "/connections?limit=100" "/connections?limit=100&sort=rtt" "/metrics" "/closed?limit=100" "/healthz"; do
  read -r p50 p99 < <(time_path "$path")
  log "GET $path: p50 ${p50} ms, p99 ${p99} ms"
done
curl -s "http://$ADMIN/metrics" >"$OUT/metrics.txt"
log "exposition: $(wc -c <"$OUT/metrics.txt") bytes, $(grep -vc '^#' "$OUT/metrics.txt") lines of samples"

# The data path while listings read every socket's TCP_INFO: ack round trips, one item in flight.
ack_p() {
  "$CW" bench flood --to "127.0.0.1:$PORT" --conns 1 --items 5000 --ack --window 1 --batch 1 --json 2>/dev/null \
    | sed 's/.*"ack_latency":{\([^}]*\)}.*/\1/'
}
log "ack latency, one item in flight, quiet admin API: $(ack_p)"
( while true; do curl -s -o /dev/null "http://$ADMIN/connections?limit=100&sort=rtt"; done ) &
LOOP=$!; PIDS+=("$LOOP")
log "ack latency, one item in flight, listings sorted by rtt back to back: $(ack_p)"
kill "$LOOP" 2>/dev/null || true
log "server RSS holding $N connections: $(rss_kib $SRV) KiB"
