#!/usr/bin/env bash
# Healthy idle peers closed as keepalive_timeout when their keep-alive probes leave in one burst
# (docs/OPERATIONS.md): N idle connections on loopback, held by a separate `connwarden bench idle`
# process that stays alive throughout, so every close is a false one. Every STEP seconds: live
# connections, keepalive_timeout closes, connections with an unanswered probe (all from
# /metrics) and the drops counted in /proc/net/softnet_stat since the start.
#
# usage: bench/keepalive_burst.sh [N]   idle connections (default 15000; one process may hold
#                                       at most ~19,000 here)
# env:   STEPS (6) STEP (20)  samples and seconds between them (30 and 20: 10 minutes)
#        VETH (0)             1: server and load in two network namespaces joined by a veth
#                             pair (how containers connect), removed on every exit
#        SERVE_ARGS ("")      more flags for serve (default keep-alive: 30 s, then 30 probes 1 s
#                             apart)
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

if [ "${VETH:-0}" = 1 ]; then
  TAG=$$ SNS=cwb-s-$$ CNS=cwb-c-$$
  remove_namespaces() { kill_pids; ip netns del "$SNS" 2>/dev/null || true; ip netns del "$CNS" 2>/dev/null || true; }
  trap remove_namespaces EXIT
  ip netns add "$SNS"; ip netns add "$CNS"
  ip link add "cwbs$TAG" type veth peer name "cwbc$TAG"
  ip link set "cwbs$TAG" netns "$SNS"; ip link set "cwbc$TAG" netns "$CNS"
  ip -n "$SNS" addr add 10.234.0.1/24 dev "cwbs$TAG"
  for i in $(seq 2 9); do ip -n "$CNS" addr add "10.234.0.$i/24" dev "cwbc$TAG"; done
  for ns in "$SNS" "$CNS"; do ip -n "$ns" link set lo up; done
  ip -n "$SNS" link set "cwbs$TAG" up; ip -n "$CNS" link set "cwbc$TAG" up
  IN_SERVER="ip netns exec $SNS" IN_CLIENT="ip netns exec $CNS"
  LISTEN_HOST=10.234.0.1 SOURCE_BASE=10.234.0.2
fi
prepare_release
serve_with_idle_load "$N" "$PORT" "$ADMIN"
start=$(softnet_drops)
log "machine: $(nproc) cores, kernel $(uname -r), net.core.netdev_max_backlog $(cat /proc/sys/net/core/netdev_max_backlog); $(established $PORT) idle connections established over $([ "${VETH:-0}" = 1 ] && echo "a veth pair between two namespaces" || echo loopback); serve ${SERVE_ARGS:-(defaults)}; results in $OUT"
for step in $(seq "$STEPS"); do
  sleep "$STEP"
  kill -0 "$LOAD" || { log "the load process died: every close below is not a false one"; exit 1; }
  ${IN_SERVER:-} curl -s "http://$ADMIN/metrics" >"$OUT/metrics.txt"
  log "t=+$((step * STEP))s: live $(sample 'connwarden_connections_live ')," \
    "closed as keepalive_timeout $(sample 'connwarden_connections_closed_total{reason="keepalive_timeout"}')," \
    "probing $(sample 'connwarden_connections_probing ')," \
    "softnet drops +$(( $(softnet_drops) - start ))"
done
${IN_SERVER:-} curl -s "http://$ADMIN/metrics" >"$OUT/metrics.txt"
closed=$(sample 'connwarden_connections_closed_total{reason="keepalive_timeout"}')
log "result: ${closed:-?} of $N healthy idle peers closed as keepalive_timeout in $((STEPS * STEP)) s;" \
  "probe storms noticed $(sample 'connwarden_keepalive_storms_total ');" \
  "softnet drops +$(( $(softnet_drops) - start ))"
