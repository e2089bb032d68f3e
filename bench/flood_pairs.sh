#!/usr/bin/env bash
# Flood items/s of two `connwarden` binaries, side by side: PAIRS alternating runs (the order
# swapped every other pair, so neither always runs first), medians reported. The load is this
# build's `connwarden bench flood` in its own process.
#
# usage: bench/flood_pairs.sh BEFORE AFTER
# env:   PAIRS (10); CONNS (64) connections; ITEMS (20000) items per connection; PORT (7851)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BEFORE=$1 AFTER=$2
PAIRS=${PAIRS:-10}
CONNS=${CONNS:-64}
ITEMS=${ITEMS:-20000}
PORT=${PORT:-7851}
OUT=${OUT:-$ROOT/bench/results/flood-pairs-$(date +%Y%m%d-%H%M%S)}
LOAD=$ROOT/target/release/connwarden
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
[ -x "$LOAD" ] || prepare_release

# flood BIN: items/s of one flood against BIN
flood() {
  RUST_LOG=warn "$1" serve --listen "127.0.0.1:$PORT" --admin off --sink file:/dev/null >/dev/null 2>&1 &
  local srv=$!; PIDS+=("$srv")
  for _ in $(seq 100); do ss -Hltn "( sport = :$PORT )" | grep -q . && break; sleep 0.05; done
  "$LOAD" bench flood --to "127.0.0.1:$PORT" --conns "$CONNS" --items "$ITEMS" --sources 8 --json \
    >"$OUT/flood.json" 2>/dev/null
  kill -TERM "$srv"; wait "$srv" 2>/dev/null || true
  json_num "$OUT/flood.json" items_per_second
}

before=() after=()
for pair in $(seq "$PAIRS"); do
  if [ $((pair % 2)) = 1 ]; then b=$(flood "$BEFORE"); a=$(flood "$AFTER"); else a=$(flood "$AFTER"); b=$(flood "$BEFORE"); fi
  log "pair $pair: before $b, after $a items/s"
  before+=("$b"); after+=("$a")
done
mb=$(printf '%s\n' "${before[@]}" | median); ma=$(printf '%s\n' "${after[@]}" | median)
awk -v b="$mb" -v a="$ma" 'BEGIN {printf "median items/s: before %d, after %d (%.3fx)\n", b, a, a / b}' | tee -a "$OUT/summary.txt"
