#!/usr/bin/env bash
# Healthy idle peers closed as keepalive_timeout when their keep-alive probes leave in one burst
# (docs/OPERATIONS.md): N idle connections on loopback, held by a separate `connwarden bench idle`
# process that stays alive throughout, so every close is a false one. Every STEP seconds: live
# connections, keepalive_timeout closes, connections with an unanswered probe (all from
# /metrics) and the drops counted in /proc/net/softnet_stat since the start.
#
# usage: bench/keepalive_burst.sh [N]   idle connections (default 15000; one process may hold
#                                       at most ~19,000 here)
# env:   STEPS (6) STEP (20)  samples and seconds between them
#        SERVE_ARGS ("")      more flags for serve (default keep-alive: 30 s, 3 probes 10 s apart)
#        CW_SERVE (target/release/connwarden)  the serve binary, e.g. one of an earlier commit
#        OUT (bench/results/keepalive-burst-<time>)
# It changes nothing on the host. To see the remedy, raise net.core.netdev_max_backlog above N
# yourself (sysctl -w; it is global) and run it again.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-15000}
STEPS=${STEPS:-6}
STEP=${STEP:-20}
OUT=${OUT:-$ROOT/bench/results/keepalive-burst-$(date +%Y%m%d-%H%M%S)}
PORT=7722
ADMIN=127.0.0.1:7723
source "$ROOT/bench/lib.sh"
softnet_drops() { local total=0 processed dropped rest; while read -r processed dropped rest; do total=$((total + 16#$dropped)); done </proc/net/softnet_stat; echo "$total"; }
# the value of the sample whose line starts with $1
sample() { awk -v k="$1" 'index($0, k) == 1 {print $NF}' "$OUT/metrics.txt"; }

prepare_release
serve_with_idle_load "$N" "$PORT" "$ADMIN"
start=$(softnet_drops)
log "machine: $(nproc) cores, kernel $(uname -r), net.core.netdev_max_backlog $(cat /proc/sys/net/core/netdev_max_backlog); $(established $PORT) idle connections established; serve ${SERVE_ARGS:-(defaults)}; results in $OUT"
for step in $(seq "$STEPS"); do
  sleep "$STEP"
  kill -0 "$LOAD" || { log "the load process died: every close below is not a false one"; exit 1; }
  curl -s "http://$ADMIN/metrics" >"$OUT/metrics.txt"
  log "t=+$((step * STEP))s: live $(sample 'connwarden_connections_live ')," \
    "closed as keepalive_timeout $(sample 'connwarden_connections_closed_total{reason="keepalive_timeout"}')," \
    "probing $(sample 'connwarden_connections_probing ')," \
    "softnet drops +$(( $(softnet_drops) - start ))"
done
