#!/usr/bin/env bash
# Memory per idle connection past one process's file limit: N idle connections (default
# 100,000) to PROCS `serve --reuse-port` processes sharing one port (the kernel spreads the
# connections over them), held by LOADS `connwarden bench idle` processes (a process may hold
# at most 20,000 descriptors here, so neither side fits in one). The figure is the growth of the
# servers' summed RSS divided by N, read SETTLE seconds after the last connection (past
# park_after and jemalloc's decay), with how many connections each server holds and how many
# of them are parked (from each one's /metrics).
#
# usage: bench/idle_reuse_port.sh [N]
# env:   PROCS (6) LOADS (6) SETTLE (20) RUNS (1)
#        CW_BEFORE (unset)  a connwarden binary from an earlier commit, measured in the same runs
#        OUT (bench/results/idle-reuse-port-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
PROCS=${PROCS:-6}
LOADS=${LOADS:-6}
SETTLE=${SETTLE:-20}
RUNS=${RUNS:-1}
PORT=7740
ADMIN_BASE=7750
OUT=${OUT:-$ROOT/bench/results/idle-reuse-port-$(date +%Y%m%d-%H%M%S)}
source "$ROOT/bench/lib.sh"
prepare_release
CW=$ROOT/target/release/connwarden

# metric ADMIN NAME: the value of an unlabelled metric, or 0
metric() { curl -sf "http://$1/metrics" | awk -v n="connwarden_$2" '$1==n {print $2; f=1} END {if (!f) print 0}'; }

# measure NAME BINARY: prints bytes per connection, and logs each server's share
measure() {
  local name=$1 bin=$2 i servers=() base=0 after=0
  PIDS=()
  trap kill_pids EXIT # this runs in a subshell: its processes stop with it on every path
  for i in $(seq 0 $((PROCS - 1))); do
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$PORT" --reuse-port true --sink file:/dev/null \
      --admin "127.0.0.1:$((ADMIN_BASE + i))" --max-connections 19500 \
      >"$OUT/$name.server-$i.out" 2>"$OUT/$name.server-$i.err" </dev/null &
    servers+=("$!"); PIDS+=("$!")
  done
  for i in $(seq 0 $((PROCS - 1))); do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$((ADMIN_BASE + i))/healthz" >/dev/null && break; sleep 0.05; done
  done
  sleep 1
  for i in "${servers[@]}"; do base=$((base + $(rss_kib "$i"))); done
  local per_load=$(((N + LOADS - 1) / LOADS)) left=$N
  for i in $(seq 0 $((LOADS - 1))); do
    local n=$((left < per_load ? left : per_load)); left=$((left - n))
    # each load from 8 addresses of its own: 127.<i+1>.0.2 on
    "$CW" bench idle --to "127.0.0.1:$PORT" --conns "$n" --sources 8 --source-base "127.$((i + 1)).0.2" \
      --json >"$OUT/$name.load-$i.json" 2>"$OUT/$name.load-$i.err" &
    PIDS+=("$!")
  done
  for _ in $(seq 1200); do [ "$(established $PORT)" -ge "$N" ] && break; sleep 0.25; done
  sleep "$SETTLE"
  local live; live=$(established $PORT)
  for i in "${servers[@]}"; do after=$((after + $(rss_kib "$i"))); done
  local shares="" parked=0
  for i in $(seq 0 $((PROCS - 1))); do
    local a="127.0.0.1:$((ADMIN_BASE + i))"
    shares="$shares $(metric "$a" connections_live)"
    parked=$((parked + $(metric "$a" parked_connections | cut -d. -f1)))
  done
  local per=$(((after - base) * 1024 / N))
  log "$name: $live established; per server:$shares; parked $parked; servers' RSS $base -> $after KiB: $per bytes per connection"
  kill_pids 2>/dev/null
  for _ in $(seq 200); do [ "$(established $PORT)" -eq 0 ] && break; sleep 0.1; done
  echo "$per"
}

log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r); N=$N procs=$PROCS loads=$LOADS settle=${SETTLE}s runs=$RUNS; results in $OUT"
echo "server,run,bytes_per_conn" >"$OUT/idle-reuse-port.csv"
for run in $(seq 1 "$RUNS"); do
  echo "connwarden,$run,$(measure "connwarden-$run" "$CW" | tail -1)" >>"$OUT/idle-reuse-port.csv"
  if [ -n "${CW_BEFORE:-}" ]; then
    echo "before,$run,$(measure "before-$run" "$CW_BEFORE" | tail -1)" >>"$OUT/idle-reuse-port.csv"
  fi
done
cw=$(awk -F, '$1=="connwarden" {print $3}' "$OUT/idle-reuse-port.csv" | median)
log "median bytes per idle connection, $N on $PROCS processes: this build $cw"
if [ -n "${CW_BEFORE:-}" ]; then
  log "median bytes per idle connection, $N on $PROCS processes: before ($CW_BEFORE) $(awk -F, '$1=="before" {print $3}' "$OUT/idle-reuse-port.csv" | median)"
fi
