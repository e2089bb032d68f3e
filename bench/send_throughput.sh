#!/usr/bin/env bash
# Throughput of acknowledged delivery: `connwarden send` into `connwarden serve --sink file:…`,
# with and without --ack, for each --fsync mode, with 1 and 4 concurrent senders, all in one run.
#
# usage: bench/send_throughput.sh [ITEMS]   items per sender (default 500000)
# env:   RUNS (3)   repetitions of each case; the median is reported
#        SENDERS ("1 4")   sender counts to try
#        OUT (bench/results/send-throughput-<time>)   logs, sink files, summary
#
# Items/s = all items of all senders / wall time from the first sender's start until every item
# is in the sink file (with --ack, that is when the last sender exits: every item acknowledged). The sink file is on the disk under OUT
# (fsync means something there, unlike tmpfs), and is deleted after each run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ITEMS=${1:-500000}
RUNS=${RUNS:-3}
SENDERS=${SENDERS:-"1 4"}
OUT=${OUT:-$ROOT/bench/results/send-throughput-$(date +%Y%m%d-%H%M%S)}
PORT=7720
BIN=$ROOT/target/release/connwarden
source "$ROOT/bench/lib.sh"
SERVER=

cleanup() { [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
now() { date +%s.%N; }

(cd "$ROOT" && cargo build --release --quiet)
python3 - "$ITEMS" > "$OUT/items.ndjson" <<'PY'
import sys
n = int(sys.argv[1])
w = sys.stdout.write
for i in range(n):
    w('{"ip":"10.%d.%d.%d","n":%d,"host":"agent-%d"}\n' % (i >> 16 & 255, i >> 8 & 255, i & 255, i, i % 977))
PY

# one_run MODE ACK SENDERS -> prints items/s
one_run() {
  local mode=$1 ack=$2 senders=$3 sink="$OUT/sink.ndjson" pids=() s start end
  rm -f "$sink"
  "$BIN" serve --listen "127.0.0.1:$PORT" --sink "file:$sink" --fsync "$mode" --log-format json \
    2>"$OUT/serve-$mode.log" &
  SERVER=$!
  for _ in $(seq 100); do grep -q '"listening"' "$OUT/serve-$mode.log" 2>/dev/null && break; sleep 0.05; done
  start=$(now)
  for s in $(seq "$senders"); do
    "$BIN" send --to "127.0.0.1:$PORT" $ack "$OUT/items.ndjson" 2>>"$OUT/send-$mode.log" &
    pids+=($!)
  done
  for s in "${pids[@]}"; do wait "$s" || { echo "send failed, see $OUT/send-$mode.log" >&2; exit 1; }; done
  # With --ack every item is in the file already; without, the last ones may still be on
  # their way to the sink: the run ends when the file has them all (at most 60 s more).
  for _ in $(seq 6000); do [ "$(wc -l <"$sink")" -ge $((ITEMS * senders)) ] && break; sleep 0.01; done
  end=$(now)
  kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
  local lines; lines=$(wc -l <"$sink")
  [ "$lines" -eq $((ITEMS * senders)) ] || { echo "sink has $lines lines, expected $((ITEMS * senders))" >&2; exit 1; }
  grep -o '"syncs":[0-9]*' "$OUT/serve-$mode.log" | tail -1 | cut -d: -f2 >"$OUT/last-syncs"
  rm -f "$sink"
  awk -v n=$((ITEMS * senders)) -v a="$start" -v b="$end" 'BEGIN {printf "%.0f\n", n / (b - a)}'
}

log "items per sender: $ITEMS, runs: $RUNS (median), machine: $(nproc) cores, $(uname -r)"
log "$(printf '%-8s %-7s %-8s %12s %10s  %s' fsync ack senders items/s fsyncs runs)"
for senders in $SENDERS; do
  for ack in --ack ""; do
    for mode in always batch never; do
      rates=()
      for _ in $(seq "$RUNS"); do rates+=("$(one_run "$mode" "$ack" "$senders")"); done
      med=$(printf '%s\n' "${rates[@]}" | median)
      log "$(printf '%-8s %-7s %-8s %12s %10s  %s' "$mode" "${ack:-no}" "$senders" "$med" "$(cat "$OUT/last-syncs")" "${rates[*]}")"
    done
  done
done
log "results in $OUT"
