#!/usr/bin/env bash
# Instructions `serve` spends per item, counted by valgrind (cachegrind, no cache simulation).
# A count does not move with the machine's load, so a change of a few per cent on the per-item
# path shows here even where a flood's items/s moves ±20 % from run to run (shared machines).
# It counts work, not time: cache misses, syscalls' cost and contention are the flood's business
# (bench/compare.sh flood), so report both.
#
# usage: bench/item_instructions.sh [BIN...]     default: target/release/connwarden
#        e.g. bench/item_instructions.sh /tmp/cw-before/target/release/connwarden target/release/connwarden
# env:   CONNS (4) connections; ITEMS ("20000 60000") items per connection in the two runs;
#        BATCH (1) items per write; RUNS (1) repetitions of the pair (the count barely moves)
#        PORT (7740); FLOOD_ARGS ("") more flags for the load, e.g. "--ack" (the ack path)
#        PROFILE_DIR (unset) keep each run's cachegrind output there, as ITEMS.cg (the last
#        binary's; bench/item_profile.sh breaks them down by function)
# Each binary serves two floods of different sizes from `connwarden bench flood` (run natively,
# only the server is under valgrind); the difference of the two counts divided by the
# difference of items is the cost per item: start-up and shutdown cancel out. Needs valgrind
# (apt-get install valgrind).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-4}
ITEMS=${ITEMS:-"20000 60000"}
BATCH=${BATCH:-1}
RUNS=${RUNS:-1}
PORT=${PORT:-7740}
LOAD=$ROOT/target/release/connwarden
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$LOAD")
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
[ -x "$LOAD" ] || (cd "$ROOT" && cargo build --release --quiet)
OUT=$(mktemp -d)
SRV=
trap '[ -n "$SRV" ] && kill -KILL "$SRV" 2>/dev/null; rm -rf "$OUT"' EXIT

wait_port() {
  local i
  for i in $(seq 600); do
    ss -Hltn "( sport = :$PORT )" | grep -q . && return
    sleep 0.1
  done
  echo "nothing listens on $PORT" >&2; exit 1
}

# count BIN ITEMS: prints the instructions of one `serve` that took CONNS × ITEMS items.
count() {
  local bin=$1 items=$2 expected=$(( CONNS * $2 )) written cg=/dev/null
  [ -n "${PROFILE_DIR:-}" ] && cg=$PROFILE_DIR/$items.cg
  RUST_LOG=warn,connwarden::server=info valgrind --tool=cachegrind --cache-sim=no \
    --cachegrind-out-file="$cg" --log-file="$OUT/vg" \
    "$bin" serve --listen "127.0.0.1:$PORT" --sink file:/dev/null --log-format json \
    >/dev/null 2>"$OUT/err" &
  SRV=$!
  wait_port
  "$LOAD" bench flood --to "127.0.0.1:$PORT" --conns "$CONNS" --items "$items" --batch "$BATCH" \
    ${FLOOD_ARGS:-} --json >"$OUT/load" 2>&1
  kill -TERM "$SRV"; wait "$SRV" || true; SRV=
  written=$(grep '"shutdown complete"' "$OUT/err" | sed 's/.*"written":\([0-9]*\).*/\1/')
  if [ "$written" != "$expected" ]; then
    echo "$bin: $written items written of $expected" >&2; exit 1
  fi
  sed -n 's/.*I *refs: *//p' "$OUT/vg" | tr -d ,
}

read -r small large <<<"$ITEMS"
declare -A per_item=()
for run in $(seq "$RUNS"); do
  for bin in "${BINS[@]}"; do
    a=$(count "$bin" "$small")
    b=$(count "$bin" "$large")
    n=$(awk -v a="$a" -v b="$b" -v d=$(( CONNS * (large - small) )) 'BEGIN {printf "%.0f", (b - a) / d}')
    echo "$bin run $run: $n instructions per item ($CONNS connections, batch $BATCH${FLOOD_ARGS:+, $FLOOD_ARGS})"
    per_item[$bin]+="$n "
  done
done
if [ ${#BINS[@]} -ge 2 ]; then
  first=${BINS[0]}
  for bin in "${BINS[@]:1}"; do
    awk -v a="${per_item[$bin]}" -v b="${per_item[$first]}" -v n1="$bin" -v n0="$first" 'BEGIN {
      split(a, x, " "); split(b, y, " "); sa = 0; sb = 0
      for (i in x) sa += x[i]; for (i in y) sb += y[i]
      printf "%s / %s: %.3f× the instructions per item\n", n1, n0, sa / sb }'
  done
fi
