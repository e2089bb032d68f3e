#!/usr/bin/env bash
# The flood budget: this build against one built from an earlier commit, interleaved run by run
# on the same machine, reporting items/s and the server's CPU time per item (user + system, from
# /proc/PID/stat). On a shared machine items/s moves by ±20 % between runs as other tenants take
# the cores; CPU time per item moves far less, so report both (and bench/item_instructions.sh
# for a count that does not move at all).
#
# usage: bench/flood_budget.sh BEFORE_BIN [AFTER_BIN]   AFTER_BIN defaults to target/release/connwarden
# env:   RUNS (8) pairs of runs; CONNS (64) connections; ITEMS (20000) items per connection;
#        BATCH (256) items per write; PORT (7791); OUT (bench/results/flood-budget-<time>)
# Each run: a fresh `serve` (file:/dev/null sink, admin off), one `connwarden bench flood` from
# this build over 8 source addresses, the server's CPU ticks read before and after the flood.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=${1:?usage: bench/flood_budget.sh BEFORE_BIN [AFTER_BIN]}
AFTER=${2:-$ROOT/target/release/connwarden}
RUNS=${RUNS:-8}
CONNS=${CONNS:-64}
ITEMS=${ITEMS:-20000}
BATCH=${BATCH:-256}
PORT=${PORT:-7791}
OUT=${OUT:-$ROOT/bench/results/flood-budget-$(date +%Y%m%d-%H%M%S)}
LOAD=$ROOT/target/release/connwarden
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
[ -x "$LOAD" ] || prepare_release
TICK=$(getconf CLK_TCK)

# one_run BIN NAME: prints "items_per_s cpu_ns_per_item"
one_run() {
  local bin=$1 name=$2 pid t0 t1
  "$bin" serve --listen "127.0.0.1:$PORT" --sink file:/dev/null --admin off --log-format json \
    2>"$OUT/$name.err" &
  pid=$!; PIDS+=("$pid")
  for _ in $(seq 200); do grep -q '"listening"' "$OUT/$name.err" && break; sleep 0.05; done
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  "$LOAD" bench flood --to "127.0.0.1:$PORT" --conns "$CONNS" --items "$ITEMS" --batch "$BATCH" \
    --sources 8 --json >"$OUT/$name.json"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(json_num "$OUT/$name.json" items_per_second) $(( (t1 - t0) * 1000000000 / TICK / (CONNS * ITEMS) ))"
}

log "flood budget: $CONNS connections x $ITEMS items, batch $BATCH, $RUNS interleaved pairs; before $BEFORE, after $AFTER"
declare -a rate_b rate_a cpu_b cpu_a
for run in $(seq "$RUNS"); do
  read -r rb cb < <(one_run "$BEFORE" "before-$run")
  read -r ra ca < <(one_run "$AFTER" "after-$run")
  rate_b+=("$rb"); cpu_b+=("$cb"); rate_a+=("$ra"); cpu_a+=("$ca")
  log "run $run: before $rb items/s, $cb ns CPU/item; after $ra items/s, $ca ns CPU/item"
done
mb=$(printf '%s\n' "${rate_b[@]}" | median); ma=$(printf '%s\n' "${rate_a[@]}" | median)
cb=$(printf '%s\n' "${cpu_b[@]}" | median); ca=$(printf '%s\n' "${cpu_a[@]}" | median)
log "median items/s: before $mb, after $ma: after/before $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", a / b}')x"
log "median server CPU per item: before $cb ns, after $ca ns: after/before $(awk -v a="$ca" -v b="$cb" 'BEGIN {printf "%.3f", a / b}')x"
